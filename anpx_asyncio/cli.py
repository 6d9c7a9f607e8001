"""``python -m anpx_asyncio gateway | receiver | both``: a launch plan run on asyncio."""

from __future__ import annotations

import asyncio

from anpx_host.launch import run_cli
from anpx_host.runplan import run_plan

from .gateway import GatewayServer
from .receiver import ReceiverClient

PROG = "python -m anpx_asyncio"


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv,
        PROG,
        lambda plan, app: asyncio.run(run_plan(plan, app, GatewayServer, ReceiverClient)),
    )
