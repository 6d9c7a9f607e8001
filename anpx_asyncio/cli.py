"""``python -m anpx_asyncio gateway | receiver | both``: a launch plan run on asyncio."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from anpx_host.launch import Plan, run_cli
from anpx_host.runplan import run_plan

from .gateway import GatewayServer
from .receiver import ReceiverClient
from .visitor import connect_main

PROG = "python -m anpx_asyncio"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["connect"]:  # the visitor (anpx_asyncio/visitor.py)
        return connect_main(args[1:], PROG)
    return run_cli(argv, PROG, _execute)


def _execute(plan: Plan, app: Any) -> None:
    loop_factory = None
    if plan.loop == "uvloop":
        import uvloop  # make_plan checked that it is installed

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run_plan(plan, app, GatewayServer, ReceiverClient))
