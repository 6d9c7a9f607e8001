"""Wake keys of the host layer, beside the core's (:data:`anpx_core.contract.WakeKey`).

The cores name connection ids and :class:`~anpx_core.contract.Signal` members; the code
around them (the app's lifespan, response heads, the pump) needs a few keys of its own.
They are a separate enum so that no id and no core signal can collide with them.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

from anpx_core.contract import WakeKey


class HostKey(enum.Enum):
    LIFESPAN_QUEUED = "lifespan_queued"  # a lifespan message is queued for the app
    LIFESPAN_CHANGED = "lifespan_changed"  # the lifespan status changed
    HEADS_DUE = "heads_due"  # a response head waits for its first body part
    CLOSED = "closed"  # the pump finished serving a connection (core.closed was called)


#: Everything a driver's Wakers may wait on.
Key: TypeAlias = WakeKey | HostKey
