"""The receiver, sans IO: tunnels to gateways, calls into the app or a local service.

Units (each a module of this package):

* :mod:`.core` -- :class:`ReceiverCore`, the coordinator: the connection table, the driver
  contract (:mod:`anpx_core.contract`), the deadline heap, stream dispatch by kind;
* :mod:`.links` -- one :class:`~.links.GatewayLink` per gateway URL: dialling, handshake
  headers, backoff with injected jitter, giving up, the JSON pings a v1 gateway needs;
* :mod:`.http` -- the HTTP stream kind: a request in, a response out, the access log;
* :mod:`.asgi_calls` -- its in-process ASGI backend; :mod:`.forward_calls` -- its backend
  for a local HTTP service, with the upstream connection pool;
* :mod:`.context` -- what the units share, and the seams between them (protocols);
* :mod:`.settings`; the deadline heap is :mod:`anpx_core.timers`, shared with the gateway.

Driver contract: the one every core has (``receive``, ``take_output``, ``written``,
``can_read``, ``closed``, ``lost``, ``pop_wakeups``, ``next_deadline``/``handle_timer``,
``set_wall_clock``), plus:

* ``pop_connects()``: outgoing connections to open (to a gateway, or to the local HTTP
  service in forward mode; ``Signal.CONNECTS`` says there are some); answer each with
  ``connected(cid, now)`` or ``connect_failed(cid, now, reason)``.
* ASGI mode: ``pop_app_calls()`` gives ``(call_id, scope)`` pairs (``Signal.APP_CALLS``);
  run the app for each with ``receive``/``send`` built on ``asgi_receive(call_id)`` (None:
  wait for the wake-up ``call_id``) and ``asgi_send(call_id, message, now)`` (then wait
  while ``not asgi_writable(call_id)``), and report the end with
  ``app_finished(call_id, exc, now)``.
* ``start``, ``begin_drain`` (``Signal.DRAINED`` once nothing is in flight), ``close``;
  ``Signal.GAVE_UP`` when every gateway is given up on (``given_up``, ``last_error``).
"""

from __future__ import annotations

from .core import ReceiverCore
from .settings import MAX_RECONNECT_DELAY, ConnectRequest, GatewayAddress, ReceiverSettings

__all__ = [
    "MAX_RECONNECT_DELAY",
    "ConnectRequest",
    "GatewayAddress",
    "ReceiverCore",
    "ReceiverSettings",
]
