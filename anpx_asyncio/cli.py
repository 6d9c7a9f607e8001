"""``python -m anpx_asyncio gateway | receiver | both``: execute a core launch plan on asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from anpx_host.launch import (
    Plan,
    ready_lines,
    receiver_lines,
    run_cli,
    use_bound_ports,
)
from anpx_host.tls import gateway_listens, make_context

from .gateway import GatewayServer
from .receiver import ReceiverClient
from .visitor import connect_main

PROG = "python -m anpx_asyncio"
log = logging.getLogger("anpx")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["connect"]:  # the visitor (anpx_asyncio/visitor.py)
        return connect_main(args[1:], PROG)
    return run_cli(argv, PROG, lambda plan, app: asyncio.run(_run(plan, app)))


async def _run(plan: Plan, app: Any) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _on_signal, signum, stop)
    gateway = receiver = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        if plan.gateway is not None:
            g = plan.gateway
            http, tunnel, admin = gateway_listens(g)
            gateway = GatewayServer(g.settings, http=http, tunnel=tunnel, admin=admin)
            task = loop.create_task(gateway.run())
            tasks.append(task)
            waits: list[asyncio.Future[Any]] = [task, gateway.started]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # raises the bind failure
            ports = gateway.started.result()
            for line in ready_lines(plan, ports.http, ports.tunnel, ports.admin):
                print(line, flush=True)
            use_bound_ports(plan, ports.tunnel)
        if plan.receiver is not None:
            r = plan.receiver
            receiver = ReceiverClient(r.settings, app, tls=make_context(r.tls))
            for line in receiver_lines(plan):
                print(line, flush=True)
            rc_task = loop.create_task(receiver.run())
            tasks.append(rc_task)
            rc_task.add_done_callback(lambda _t: stop.set())
        await stop.wait()
        if receiver is not None and rc_task.done() and rc_task.exception() is not None:
            raise rc_task.exception()  # type: ignore[misc]
        # Both sides drain at once: no new requests, in-flight ones finish, then the tunnel
        # closes (a receiver that is draining does not reconnect).
        draining = []
        if gateway is not None:
            draining.append(gateway.shutdown(plan.gateway.grace))  # type: ignore[union-attr]
        if receiver is not None:
            draining.append(receiver.shutdown(plan.receiver.grace))  # type: ignore[union-attr]
        await asyncio.gather(*draining)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    log.info("%s received: draining", signal.Signals(signum).name)
    stop.set()
