"""anpx on trio: ``python -m anpx_trio gateway | receiver | both``, or embed it::

async with trio.open_nursery() as nursery:
    nursery.start_soon(ReceiverClient(ReceiverSettings(gateway_urls=[...]), app).run)
"""

from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings
from anpx_host.config import GatewayConfig, ReceiverConfig
from anpx_host.errors import StartupError
from anpx_host.launch import Listen

from .gateway import GatewayServer
from .receiver import ReceiverClient

__all__ = [
    "GatewayConfig",
    "GatewayServer",
    "GatewaySettings",
    "Listen",
    "ReceiverClient",
    "ReceiverConfig",
    "ReceiverSettings",
    "StartupError",
]
