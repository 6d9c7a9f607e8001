"""``python -m anpx_trio connect SERVICE ...`` (and anpx_asyncio): the visitor's command line,
shared by both drivers. It reaches a TCP service offered by a receiver through the gateway,
with no public port: ``--listen HOST:PORT`` relays each local connection as a stream,
``--stdio`` relays stdin/stdout (ssh's ProxyCommand)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from anpx_core.auth import NoAuth, SharedSecretClient
from anpx_core.tcp import MAX_TCP_STREAM_WINDOW, TcpSettings, check_service
from anpx_core.visitor import VisitorSettings

from .errors import StartupError
from .launch import TlsPolicy
from .tcpsock import parse_hostport
from .tls import make_context

SECRET_ENV = "ANPX_VISITOR_SECRET"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@dataclass(slots=True)
class VisitorPlan:
    settings: VisitorSettings
    listen: tuple[str, int] | None  # None: --stdio
    tls: object  # an ssl.SSLContext for wss://, or None


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{prog} connect",
        description="Reach a TCP service offered by a receiver, through the gateway.",
    )
    p.add_argument("service", help="the service name a receiver offers ([[receiver.tcp]] name)")
    p.add_argument("--gateway-url", required=True, metavar="URL", help="ws:// or wss:// tunnel URL")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--listen", metavar="HOST:PORT", help="accept local connections here")
    how.add_argument("--stdio", action="store_true", help="relay stdin/stdout (ssh ProxyCommand)")
    p.add_argument("--client-id", metavar="ID", help="this visitor's name (logs, signatures)")
    p.add_argument(
        "--visitor-secret-file",
        metavar="FILE",
        help=f"the visitor credential (else ${SECRET_ENV}; none when the gateway's auth is off)",
    )
    p.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify a wss:// gateway")
    p.add_argument("--idle-timeout", type=float, default=TcpSettings().idle_timeout, metavar="S")
    p.add_argument(
        "--window",
        type=int,
        default=TcpSettings().window,
        metavar="BYTES",
        help="receive window of each connection (like tcp_stream_window; default 8 MiB)",
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def parse_visitor(argv: list[str], prog: str) -> VisitorPlan:
    args = build_parser(prog).parse_args(argv)
    try:
        check_service(args.service)
        if not 0 <= args.window <= MAX_TCP_STREAM_WINDOW:
            raise ValueError(f"--window must be 0 to {MAX_TCP_STREAM_WINDOW} bytes")
        listen = parse_hostport(args.listen, "--listen", any_port=True) if args.listen else None
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    secret: bytes | None = None
    if args.visitor_secret_file:
        try:
            with open(args.visitor_secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise StartupError(f"--visitor-secret-file: {exc.strerror or exc}") from None
        if not secret:
            raise StartupError("--visitor-secret-file is empty")
    elif os.environ.get(SECRET_ENV):
        secret = os.environ[SECRET_ENV].encode()
    client_id = args.client_id or f"visitor-{uuid.uuid4().hex[:8]}"
    auth = (
        SharedSecretClient(secret, client_id, nonce_source=os.urandom)
        if secret
        else NoAuth(client_id)
    )
    settings = VisitorSettings(
        gateway_url=args.gateway_url,
        service=args.service,
        client_id=client_id,
        auth=auth,
        tcp=TcpSettings(idle_timeout=args.idle_timeout, window=args.window),
        new_request_id=lambda: str(uuid.uuid4()),
    )
    try:
        from anpx_core.receiver.settings import GatewayAddress

        tls_on = GatewayAddress.parse(args.gateway_url).tls
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    tls = None
    if tls_on:
        tls = make_context(TlsPolicy(server_side=False, ca_file=args.ca_file))
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return VisitorPlan(settings, listen, tls)


def visitor_main(argv: list[str], prog: str, run: Callable[[VisitorPlan], None]) -> int:
    """Parse, then ``run(plan)`` on the driver's loop; 1 with one line when it fails."""
    from .launch import first_error

    try:
        plan = parse_visitor(argv, prog)
        try:
            run(plan)
        except BaseException as exc:  # a task's error arrives wrapped in an exception group
            err = first_error(exc)
            if isinstance(err, StartupError):
                raise err from None
            raise
    except StartupError as exc:
        print(f"{prog} connect: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK
