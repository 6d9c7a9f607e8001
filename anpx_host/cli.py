"""The command line shared by both drivers: argv -> (mode, Config), nothing else.

``python -m anpx_trio [gateway|receiver|both] [options]``. The options carry
anp-proxy's names (``--config``, ``--local-app``, ``--gateway-host``, ...) and
override the config file, which overrides the defaults. Without a mode
argument the mode comes from ``--mode``, then the file's ``mode`` key.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .config import APP_INTERFACES, LOG_LEVELS, LOOPS, MODES, Config, ConfigError, load_config

__all__ = ["OPTIONS", "build_parser", "parse_command_line", "parse_or_exit"]


@dataclass(frozen=True, slots=True)
class Option:
    flags: tuple[str, ...]
    key: str | None  # the dotted config key it overrides (None: handled specially)
    help: str
    kwargs: dict[str, Any]


def _opt(*flags: str, key: str | None, help: str, **kwargs: Any) -> Option:
    return Option(flags, key, help, kwargs)


#: Every option, with the config key it overrides (the reference lists these too).
OPTIONS: tuple[Option, ...] = (
    _opt("-c", "--config", key=None, help="TOML config file (anp-proxy schema)", metavar="FILE"),
    _opt("-m", "--mode", key="mode", help="mode when none is given as an argument", choices=MODES),
    _opt("--gateway-host", key="gateway.host", help="public HTTP listener address", metavar="HOST"),
    _opt("--gateway-port", key="gateway.port", help="public HTTP port", type=int, metavar="PORT"),
    _opt("--wss-host", key="gateway.wss_host", help="tunnel listener address", metavar="HOST"),
    _opt(
        "--wss-port", key="gateway.wss_port", help="tunnel listener port", type=int, metavar="PORT"
    ),
    _opt(
        "--admin-port",
        key="gateway.admin_port",
        help="/health and /stats listener port (0: none)",
        type=int,
        metavar="PORT",
    ),
    _opt(
        "--workers",
        key="gateway.workers",
        help="gateway worker processes sharing the HTTP port (default 1)",
        type=int,
        metavar="N",
    ),
    _opt(
        "--insecure",
        key="gateway.insecure",
        help="allow a gateway reachable from other hosts without TLS and authentication",
        action="store_true",
    ),
    _opt(
        "--gateway-url",
        key="receiver.gateway_url",
        help="gateway tunnel URL, ws:// or wss:// (repeat for several gateways)",
        action="append",
        metavar="URL",
    ),
    _opt(
        "--local-app",
        key="receiver.local_app_module",
        help='ASGI app to serve, "module:attribute"',
        metavar="MODULE:ATTR",
    ),
    _opt(
        "--factory",
        key="receiver.app_factory",
        help="--local-app names a factory: call it to get the app",
        action="store_true",
    ),
    _opt(
        "--interface",
        key="receiver.interface",
        help="how to call --local-app: asgi, wsgi, or auto (detect)",
        choices=APP_INTERFACES,
    ),
    _opt(
        "--local-url",
        key="receiver.local_url",
        help="forward to a local HTTP service instead, e.g. http://127.0.0.1:8000",
        metavar="URL",
    ),
    _opt("--client-id", key="receiver.client_id", help="this receiver's name", metavar="ID"),
    _opt(
        "--local-addr",
        key="receiver.tcp_local_addr",
        help="with --local-port: the TCP service's address (AgentX's name; default 127.0.0.1)",
        metavar="HOST",
    ),
    _opt(
        "--local-port",
        key="receiver.tcp_local_port",
        help="offer the TCP service at --local-addr:PORT, named by --client-id (docs/tcp.md)",
        type=int,
        metavar="PORT",
    ),
    _opt(
        "--route",
        key="receiver.routes",
        help='a route this receiver serves, "host/prefix" or "/prefix" (repeat for several)',
        action="append",
        metavar="ROUTE",
    ),
    _opt(
        "--command-mode",
        key="command.enabled",
        help="serve command mode: run coding agents here (needs a token and --command-root)",
        action="store_true",
    ),
    _opt(
        "--command-root",
        key="command.roots",
        help="a directory command-mode sessions may use (repeat for several)",
        action="append",
        metavar="DIR",
    ),
    _opt(
        "--enable-mcp",
        key="command.enable_mcp",
        help="serve MCP (Streamable HTTP) at [command] mcp_path in command mode",
        action="store_true",
    ),
    _opt(
        "--mcp-port",
        key="command.mcp_port",
        help="also serve command mode and MCP on 127.0.0.1:PORT",
        type=int,
        metavar="PORT",
    ),
    _opt(
        "--log-level",
        key="logging.level",
        help="log level",
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
    ),
    _opt(
        "--debug",
        key="debug",
        help="debug mode: log at DEBUG level whatever the log level says",
        action="store_true",
    ),
    _opt(
        "--loop",
        key="loop",
        help="the asyncio driver's event loop (uvloop: pip install 'anpx[uvloop]')",
        choices=LOOPS,
    ),
)

_BY_KEY = {o.key: o.flags[-1] for o in OPTIONS if o.key}
_BY_KEY["receiver.gateway_urls"] = "--gateway-url"

_MODE_HELP = {
    "gateway": "the public side: HTTP listener + tunnel listener",
    "receiver": "the private side: tunnel to the gateway, serving the local app",
    "both": "gateway and receiver in one process (the demo app if none is given)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the first thing read is the problem.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_options(parser: argparse.ArgumentParser, *, mode_option: bool) -> None:
    for option in OPTIONS:
        if option.key == "mode" and not mode_option:
            continue
        # SUPPRESS: an option absent here must not hide one given before the mode.
        parser.add_argument(
            *option.flags, help=option.help, default=argparse.SUPPRESS, **option.kwargs
        )


def build_parser(prog: str = "anpx") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="HTTP over one outbound WebSocket: a public gateway and a private receiver.",
        epilog="Options override the config file, which overrides the defaults.",
    )
    _add_options(parser, mode_option=True)
    modes = parser.add_subparsers(dest="command", metavar="{gateway,receiver,both}")
    for mode in MODES:
        sub = modes.add_parser(mode, help=_MODE_HELP[mode], description=_MODE_HELP[mode])
        _add_options(sub, mode_option=False)
    return parser


def parse_command_line(argv: Sequence[str] | None = None, prog: str = "anpx") -> tuple[str, Config]:
    """``(mode, config)`` from ``argv``; ConfigError for a bad config, SystemExit(2) for bad usage."""
    parser = build_parser(prog)
    args = vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))
    command = args.pop("command", None)
    if command and args.get("mode", command) != command:
        parser.error(f"mode {command!r} contradicts --mode {args['mode']}")
    overrides: dict[str, Any] = {}
    for option in OPTIONS:
        dest = option.flags[-1].lstrip("-").replace("-", "_")
        if option.key is None or dest not in args:
            continue
        overrides[option.key] = args[dest]
    if command:
        overrides["mode"] = command
    urls = overrides.pop("receiver.gateway_url", None)
    if urls is not None:
        overrides["receiver.gateway_url" if len(urls) == 1 else "receiver.gateway_urls"] = (
            urls[0] if len(urls) == 1 else urls
        )
    try:
        config = load_config(args.get("config"), overrides)
    except ConfigError as exc:
        if exc.from_option and exc.path in _BY_KEY:
            raise ConfigError(f"{exc.message} (from {_BY_KEY[exc.path]})", path=exc.path) from exc
        raise
    return config.mode, config


def parse_or_exit(argv: Sequence[str] | None = None, prog: str = "anpx") -> tuple[str, Config]:
    """:func:`parse_command_line`, printing a config error as one line and exiting 2."""
    try:
        return parse_command_line(argv, prog)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
