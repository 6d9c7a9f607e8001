"""``python -m anpx_trio gateway | receiver | both``: execute a core launch plan on trio."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import trio

from anpx_host.errors import StartupError
from anpx_host.launch import (
    Plan,
    first_error,
    ready_lines,
    receiver_lines,
    run_cli,
    use_bound_ports,
)
from anpx_host.tls import gateway_listens, make_context

from .gateway import GatewayServer
from .receiver import ReceiverClient
from .visitor import connect_main

PROG = "python -m anpx_trio"
log = logging.getLogger("anpx")


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["connect"]:  # the visitor (anpx_trio/visitor.py)
        return connect_main(args[1:], prog)
    return run_cli(argv, prog, lambda plan, app: trio.run(_run, plan, app))


def anpx() -> int:
    """The ``anpx`` console script: this driver's command line."""
    return main(prog="anpx")


def anp_proxy() -> int:
    """The ``anp-proxy`` console script, for the seed's command lines
    (``anp-proxy --mode gateway|receiver|both --config FILE``): the same options."""
    return main(prog="anp-proxy")


async def _run(plan: Plan, app: Any) -> None:
    failure: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        gateway = receiver = None
        if plan.gateway is not None:
            g = plan.gateway
            http, tunnel, admin = gateway_listens(g)
            gateway = GatewayServer(g.settings, http=http, tunnel=tunnel, admin=admin)
            try:
                ports = await nursery.start(gateway.run)
            except BaseException as exc:
                err = first_error(exc)  # a nursery wraps the task's error in a group
                if isinstance(err, StartupError):
                    raise err from None
                raise
            for line in ready_lines(plan, ports.http, ports.tunnel, ports.admin):
                print(line, flush=True)
            use_bound_ports(plan, ports.tunnel)
        if plan.receiver is not None:
            r = plan.receiver
            receiver = ReceiverClient(r.settings, app, tls=make_context(r.tls))
            for line in receiver_lines(plan):
                print(line, flush=True)
            nursery.start_soon(_run_receiver, receiver, failure, nursery.cancel_scope)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s received: draining", signal.Signals(signum).name)
                break
        # Both sides drain at once: no new requests, in-flight ones finish, then the tunnel
        # closes (a receiver that is draining does not reconnect).
        async with trio.open_nursery() as draining:
            if gateway is not None:
                draining.start_soon(gateway.shutdown, plan.gateway.grace)  # type: ignore[union-attr]
            if receiver is not None:
                draining.start_soon(receiver.shutdown, plan.receiver.grace)  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()
    if failure:
        raise StartupError(str(failure[0]))


async def _run_receiver(
    receiver: ReceiverClient, failure: list[BaseException], scope: trio.CancelScope
) -> None:
    try:
        await receiver.run()
    except BaseException as exc:
        err = first_error(exc)  # an app startup failure comes wrapped by run()'s nursery
        if not isinstance(err, StartupError):
            raise
        failure.append(err)
        scope.cancel()
