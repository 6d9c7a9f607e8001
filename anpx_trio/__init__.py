"""anpx on trio: ``python -m anpx_trio gateway | receiver | both``, or embed it::

async with trio.open_nursery() as nursery:
    nursery.start_soon(ReceiverClient(ReceiverSettings(gateway_urls=[...]), app).run)
"""

from anpx_core.config import ReceiverConfig
from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings

from .gateway import GatewayServer, Listen
from .receiver import ReceiverClient, StartupError

__all__ = [
    "GatewayServer",
    "GatewaySettings",
    "Listen",
    "ReceiverClient",
    "ReceiverConfig",
    "ReceiverSettings",
    "StartupError",
]
