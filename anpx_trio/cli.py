"""``python -m anpx_trio gateway | receiver | both``: a launch plan run on trio."""

from __future__ import annotations

import logging
import sys
from typing import Any

import trio

from anpx_host.launch import Plan, run_cli
from anpx_host.runplan import run_plan

from .gateway import GatewayServer
from .receiver import ReceiverClient
from .visitor import connect_main

PROG = "python -m anpx_trio"


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["connect"]:  # the visitor (anpx_trio/visitor.py)
        return connect_main(args[1:], prog)
    return run_cli(argv, prog, _execute)


def _execute(plan: Plan, app: Any) -> None:
    if plan.loop != "asyncio":
        logging.getLogger("anpx").warning("loop = %r applies to anpx_asyncio only", plan.loop)
    trio.run(run_plan, plan, app, GatewayServer, ReceiverClient)


def anpx() -> int:
    """The ``anpx`` console script: this driver's command line."""
    return main(prog="anpx")


def anp_proxy() -> int:
    """The ``anp-proxy`` console script, for the seed's command lines
    (``anp-proxy --mode gateway|receiver|both --config FILE``): the same options."""
    return main(prog="anp-proxy")
