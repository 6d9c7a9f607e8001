"""anpx on asyncio: ``python -m anpx_asyncio gateway | receiver | both``, or embed it::

task = asyncio.create_task(ReceiverClient(ReceiverSettings(gateway_urls=[...]), app).run())
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
