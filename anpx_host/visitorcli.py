"""``python -m anpx_trio connect SERVICE ...`` (and anpx_asyncio): the visitor's command line,
shared by both drivers. It reaches a TCP service offered by a receiver through the gateway,
with no public port: ``--listen HOST:PORT`` relays each local connection as a stream,
``--stdio`` relays stdin/stdout (ssh's ProxyCommand). ``connect --config FILE`` runs every
``[[visitor.connect]]`` table of the file's ``[visitor]`` section at once, like frpc's
visitors; options win over the file's keys."""

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

from .config import ConfigError, VisitorConfig, load_config
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
        description="Reach TCP services offered by receivers, through the gateway.",
    )
    p.add_argument(
        "service",
        nargs="?",
        help="the service name a receiver offers ([[receiver.tcp]] name); "
        "without it, every [[visitor.connect]] table of --config",
    )
    p.add_argument("--config", metavar="FILE", help="a TOML file with a [visitor] section")
    p.add_argument("--gateway-url", metavar="URL", help="ws:// or wss:// tunnel URL")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--listen", metavar="HOST:PORT", help="accept local connections here")
    how.add_argument("--stdio", action="store_true", help="relay stdin/stdout (ssh ProxyCommand)")
    p.add_argument("--client-id", metavar="ID", help="this visitor's name (logs, signatures)")
    p.add_argument(
        "--visitor-secret-file",
        metavar="FILE",
        help=f"the visitor credential (else ${SECRET_ENV}; none when the gateway's auth is off)",
    )
    p.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify a wss:// gateway")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="default 3600")
    p.add_argument(
        "--window",
        type=int,
        metavar="BYTES",
        help="receive window of each connection (like tcp_stream_window; default 8 MiB)",
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _file_section(path: str | None) -> VisitorConfig:
    if path is None:
        return VisitorConfig()
    try:
        return load_config(path).visitor
    except ConfigError as exc:
        raise StartupError(str(exc)) from None


def _pairs(args: argparse.Namespace, cfg: VisitorConfig) -> list[tuple[str, str | None]]:
    """(service, listen address or None for --stdio) for each visitor to run."""
    if args.service is None:
        if args.config is None:
            raise StartupError("name a SERVICE, or give --config with [[visitor.connect]] tables")
        if args.listen or args.stdio:
            raise StartupError("--listen and --stdio go with a SERVICE")
        if not cfg.connect:
            raise StartupError(f"{args.config}: no [[visitor.connect]] tables; name a SERVICE")
        return [(service, listen) for service, listen in cfg.connect]
    if args.stdio:
        return [(args.service, None)]
    if args.listen:
        return [(args.service, args.listen)]
    listens = [listen for service, listen in cfg.connect if service == args.service]
    if not listens:
        raise StartupError("give --listen HOST:PORT or --stdio (or a [[visitor.connect]] table)")
    return [(args.service, listen) for listen in listens]


def parse_visitors(argv: list[str], prog: str) -> list[VisitorPlan]:
    """The visitors to run: one per SERVICE given, or one per ``[[visitor.connect]]``
    table of ``--config``. Options win over the file's ``[visitor]`` keys."""
    args = build_parser(prog).parse_args(argv)
    cfg = _file_section(args.config)
    gateway_url = args.gateway_url or cfg.gateway_url
    if gateway_url is None:
        raise StartupError("--gateway-url is required (or [visitor] gateway_url in --config)")
    window = cfg.window if args.window is None else args.window
    idle_timeout = cfg.idle_timeout if args.idle_timeout is None else args.idle_timeout
    try:
        pairs = _pairs(args, cfg)
        for service, _ in pairs:
            check_service(service)
        if not 0 <= window <= MAX_TCP_STREAM_WINDOW:
            raise ValueError(f"--window must be 0 to {MAX_TCP_STREAM_WINDOW} bytes")
        if idle_timeout < 0:
            raise ValueError("--idle-timeout must be >= 0 seconds")
        listens = [
            parse_hostport(listen, "--listen", any_port=True) if listen else None
            for _, listen in pairs
        ]
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    secret_file = args.visitor_secret_file or cfg.visitor_secret_file
    secret: bytes | None = None
    if secret_file:
        try:
            with open(secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise StartupError(f"{secret_file}: {exc.strerror or exc}") from None
        if not secret:
            raise StartupError(f"{secret_file}: the visitor secret file is empty")
    elif os.environ.get(SECRET_ENV):
        secret = os.environ[SECRET_ENV].encode()
    client_id = args.client_id or cfg.client_id or f"visitor-{uuid.uuid4().hex[:8]}"
    try:
        from anpx_core.receiver.settings import GatewayAddress

        tls_on = GatewayAddress.parse(gateway_url).tls
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    tls = None
    if tls_on:
        tls = make_context(TlsPolicy(server_side=False, ca_file=args.ca_file or cfg.ca_file))
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    plans = []
    for (service, _), listen in zip(pairs, listens, strict=True):
        settings = VisitorSettings(
            gateway_url=gateway_url,
            service=service,
            client_id=client_id,
            # one each: a client keeps the state of its handshake under way
            auth=(
                SharedSecretClient(secret, client_id, nonce_source=os.urandom)
                if secret
                else NoAuth(client_id)
            ),
            tcp=TcpSettings(idle_timeout=idle_timeout, window=window),
            new_request_id=lambda: str(uuid.uuid4()),
        )
        plans.append(VisitorPlan(settings, listen, tls))
    return plans


def parse_visitor(argv: list[str], prog: str) -> VisitorPlan:
    """One visitor's plan (a SERVICE on the command line)."""
    plans = parse_visitors(argv, prog)
    if len(plans) != 1:
        raise StartupError(f"{len(plans)} visitors configured where one was expected")
    return plans[0]


def visitor_main(argv: list[str], prog: str, run: Callable[[list[VisitorPlan]], None]) -> int:
    """Parse, then ``run(plans)`` on the driver's loop; 1 with one line when it fails."""
    from .launch import first_error

    try:
        plans = parse_visitors(argv, prog)
        try:
            run(plans)
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
