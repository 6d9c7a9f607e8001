"""Executing a launch plan (``gateway | receiver | both``) on either driver (anyio).

A driver hands in its ``GatewayServer`` and ``ReceiverClient`` classes; this module starts
them, prints the ready lines, waits for SIGINT/SIGTERM and drains both sides at once.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Protocol

import anyio
import anyio.abc

from .errors import StartupError
from .launch import (
    BoundPorts,
    Listen,
    Plan,
    first_error,
    ready_lines,
    receiver_lines,
    use_bound_ports,
)
from .tls import gateway_listens, make_context

log = logging.getLogger("anpx")


class Client(Protocol):
    async def run(self) -> None: ...

    async def shutdown(self, grace: float = ...) -> None: ...


class Server(Protocol):
    async def run(self, *, task_status: Any = ...) -> None: ...

    async def shutdown(self, grace: float = ...) -> None: ...


class ServerClass(Protocol):
    def __call__(
        self, settings: Any, *, http: Listen | None, tunnel: Listen | None, admin: Listen | None
    ) -> Server: ...


class ClientClass(Protocol):
    def __call__(self, settings: Any, app: Any, *, tls: Any) -> Client: ...


async def run_plan(
    plan: Plan, app: Any, gateway_class: ServerClass, client_class: ClientClass
) -> None:
    failure: list[BaseException] = []
    async with anyio.create_task_group() as tasks:
        gateway = receiver = None
        if plan.gateway is not None:
            http, tunnel, admin = gateway_listens(plan.gateway)
            gateway = gateway_class(plan.gateway.settings, http=http, tunnel=tunnel, admin=admin)
            try:
                ports: BoundPorts = await tasks.start(gateway.run)
            except BaseException as exc:
                err = first_error(exc)  # a task group wraps the task's error in a group
                if isinstance(err, StartupError):
                    raise err from None
                raise
            for line in ready_lines(plan, ports.http, ports.tunnel, ports.admin):
                print(line, flush=True)
            use_bound_ports(plan, ports.tunnel)
        if plan.receiver is not None:
            receiver = client_class(
                plan.receiver.settings, app, tls=make_context(plan.receiver.tls)
            )
            for line in receiver_lines(plan):
                print(line, flush=True)
            tasks.start_soon(_run_receiver, receiver, failure, tasks.cancel_scope)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s received: draining", signal.Signals(signum).name)
                break
        # Both sides drain at once: no new requests, in-flight ones finish, then the tunnel
        # closes (a receiver that is draining does not reconnect).
        async with anyio.create_task_group() as draining:
            if gateway is not None and plan.gateway is not None:
                draining.start_soon(gateway.shutdown, plan.gateway.grace)
            if receiver is not None and plan.receiver is not None:
                draining.start_soon(receiver.shutdown, plan.receiver.grace)
        tasks.cancel_scope.cancel()
    if failure:
        raise StartupError(str(failure[0]))


async def _run_receiver(
    receiver: Client, failure: list[BaseException], scope: anyio.CancelScope
) -> None:
    try:
        await receiver.run()
    except BaseException as exc:
        err = first_error(exc)  # an app startup failure comes wrapped by run()'s task group
        if not isinstance(err, StartupError):
            raise
        failure.append(err)
        scope.cancel()
