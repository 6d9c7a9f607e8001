"""What ``gateway | receiver | both`` will run, decided once for both drivers.

:func:`make_plan` turns a validated :class:`~anpx_host.config.Config` into a
:class:`Plan`: listeners, TLS policies, core settings, the app to serve. The
drivers only execute it (open sockets, build ``ssl.SSLContext`` from a
:class:`TlsPolicy`, run tasks). Refusals that protect users (a public
plaintext gateway) are made here, so both drivers refuse alike.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from anpx_core.auth import SharedSecretClient, SharedSecretServer
from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings

from .config import (
    AuthConfig,
    CommandConfig,
    Config,
    ConfigError,
    GatewayConfig,
    ReceiverConfig,
    to_gateway_settings,
    to_receiver_settings,
)
from .errors import StartupError

S = TypeVar("S")
SECRET_ENV = "ANPX_SHARED_SECRET"
ADMIN_TOKEN_ENV = "ANPX_ADMIN_TOKEN"

COMMAND_TOKEN_ENV = "ANPX_COMMAND_TOKEN"
MIN_COMMAND_TOKEN = 16
EXIT_OK = 0
EXIT_FAILURE = 1  # start-up failed (port in use, bad certificate, gateway unreachable)


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """Everything a driver needs to build an ``ssl.SSLContext`` (TLS 1.2 minimum, always)."""

    server_side: bool
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None  # server: CA for client certificates; client: CA for the gateway
    verify: str = (
        "required"  # server: client certificates none|optional|required; client: none|required
    )
    check_hostname: bool = True  # client side only


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    tls: TlsPolicy | None = None
    reuse_port: bool = False  # SO_REUSEPORT: a gateway worker shares the port with its siblings
    hold_for_receiver: float = 0.0  # open only once a receiver is connected, or after this


@dataclass(slots=True)
class Listen:
    """Where a driver listens: ``tls`` is the driver's TLS context (an ``ssl.SSLContext``) or
    None; ``reuse_port``: set SO_REUSEPORT before binding (gateway workers share the port);
    ``hold_for_receiver`` > 0: open it only once a receiver is connected, or after that many
    seconds (a restarted worker's public port, :func:`anpx_host.warmup.hold_for_receiver`)."""

    host: str
    port: int
    tls: Any = None
    reuse_port: bool = False
    hold_for_receiver: float = 0.0


@dataclass(slots=True)
class BoundPorts:
    """The ports a gateway actually bound (port 0 picks a free one)."""

    http: int
    tunnel: int
    admin: int | None


@dataclass(slots=True)
class GatewayPlan:
    settings: GatewaySettings
    http: Listener
    tunnel: Listener
    admin: Listener | None
    grace: float
    insecure_warning: str | None = None
    workers: int = 1
    worker: Any = None  # this process is one worker of several (anpx_host.workers.WorkerRole)


@dataclass(slots=True)
class ReceiverPlan:
    settings: ReceiverSettings
    app_spec: str | None  # "pkg.module:attr"; None with demo or forward
    factory: bool
    demo: bool
    tls: TlsPolicy
    grace: float
    interface: str = "auto"  # how to call the app: "auto", "asgi" or "wsgi"
    command: CommandConfig | None = None  # command mode (anpx_command) instead of an app
    command_token: bytes | None = None


@dataclass(slots=True)
class Plan:
    mode: str
    gateway: GatewayPlan | None = None
    receiver: ReceiverPlan | None = None
    warnings: list[str] = field(default_factory=list)
    loop: str = "asyncio"  # the asyncio driver's event loop ("asyncio" or "uvloop")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_plan(mode: str, cfg: Config) -> Plan:
    plan = Plan(mode, loop=cfg.loop)
    if cfg.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError("uvloop is not installed (pip install 'anpx[uvloop]')", path="loop")
    plan.warnings.extend(f"config key {key} has no effect in anpx" for key in cfg.ignored)
    if mode in ("gateway", "both"):
        plan.gateway = _gateway_plan(cfg, plan.warnings)
    if mode in ("receiver", "both"):
        plan.receiver = _receiver_plan(cfg, both=mode == "both")
        if cfg.command.enabled:
            _command_plan(cfg, plan.receiver, plan.warnings)
    elif cfg.command.enabled:
        plan.warnings.append("command mode runs in the receiver: it has no effect in gateway mode")
    if not cfg.command.enabled and (cfg.command.enable_mcp or cfg.command.mcp_port):
        plan.warnings.append("MCP is part of command mode: it is off without --command-mode")
    if mode == "receiver" and plan.receiver is not None and plan.receiver.demo:
        # a receiver alone would publish the demo's /echo to the gateway's users unasked
        raise ConfigError(
            "[receiver] nothing to serve: set local_app_module (--local-app module:attr) or "
            "local_url (--local-url http://127.0.0.1:PORT); for the demo: "
            "--local-app anpx_host.demo:app",
            path="receiver.local_app_module",
        )
    return plan


def _command_plan(cfg: Config, plan: ReceiverPlan, warnings: list[str]) -> None:
    """Command mode replaces the served app; it refuses to start without an API token."""
    r = cfg.receiver
    if r.local_app_module is not None or r.forward is not None:
        raise ConfigError(
            "[command] enabled: command mode is the app this receiver serves; "
            "remove local_app_module / local_url / local_port",
            path="command.enabled",
        )
    plan.command = cfg.command
    plan.command_token = resolve_command_token(cfg.command, warnings)
    plan.demo = False


def _gateway_plan(cfg: Config, warnings: list[str]) -> GatewayPlan:
    g = cfg.gateway
    tls = None
    if g.tls.enabled:
        tls = TlsPolicy(True, g.tls.cert_file, g.tls.key_file, g.tls.ca_file, "none")
    tunnel_tls = tls and replace(tls, verify=g.tls.verify_mode)
    exposed = [h for h in {g.host, g.wss_host} if not is_loopback(h)]
    warning = None
    if exposed and tls is None:
        if not g.insecure:
            raise ConfigError(
                f"[gateway] host: refusing plaintext HTTP and ws:// on {exposed[0]}, "
                "which other hosts can reach; enable [gateway.tls] or pass --insecure",
                path="gateway.host",
            )
        warning = (
            f"--insecure: serving plaintext on {exposed[0]}: requests and the tunnel can be read "
            "and altered on the network"
        )
        warnings.append(warning)
    settings = to_gateway_settings(cfg)
    if g.auth.enabled:
        settings.auth = SharedSecretServer(
            resolve_secret(g.auth, "gateway.auth", warnings),
            clock_skew=g.auth.clock_skew,
            max_attempts=g.auth.max_attempts,
        )
    if g.auth.did_wba_enabled:  # alone, or on top of the shared secret
        from .didfiles import gateway_auth

        secret = settings.auth if isinstance(settings.auth, SharedSecretServer) else None
        settings.auth = gateway_auth(g, secret)
    elif not g.auth.enabled and exposed:
        warnings.append(
            "[gateway.auth] is disabled: any host that reaches the tunnel listener can register "
            "as a receiver and answer your users' requests"
        )
    settings.tcp.visitor_auth = _visitor_auth(cfg, settings, warnings)
    if g.admin_port:
        settings.admin_token = resolve_admin_token(g, warnings)
    if g.shared_store is not None:
        from .shared import attach_shared_store

        attach_shared_store(settings, g)
    if g.workers > 1:
        if cfg.mode == "both":
            raise ConfigError(
                "[gateway] workers: more than one worker needs mode gateway; run the receiver "
                "as its own process (it connects to every worker)",
                path="gateway.workers",
            )
        if g.auth.enabled and g.shared_store is None:
            warnings.append(
                f"[gateway] workers = {g.workers} without shared_store: each worker remembers "
                "only its own authentication nonces and rate-limit counters"
            )
    return GatewayPlan(
        settings,
        Listener(g.host, g.port, tls),
        Listener(g.wss_host, g.wss_port, tunnel_tls),
        Listener(g.admin_host, g.admin_port) if g.admin_port else None,
        g.shutdown_grace,
        warning,
        workers=g.workers,
    )


def _visitor_auth(cfg: Config, settings: Any, warnings: list[str]) -> Any:
    """How visitors authenticate: the visitor credential ([gateway] visitor_secret, its
    file, or ANPX_VISITOR_SECRET); none needed when the gateway's auth is off; without a
    credential on an authenticating gateway visitors are refused (None)."""
    from anpx_core.auth import NoAuth

    g = cfg.gateway
    secret = read_credential(
        g.visitor_secret,
        g.visitor_secret_file,
        "ANPX_VISITOR_SECRET",
        "gateway",
        "visitor_secret",
        "the visitor credential",
        warnings,
    )
    if secret is not None:
        return SharedSecretServer(
            secret, clock_skew=g.auth.clock_skew, max_attempts=g.auth.max_attempts
        )
    if g.auth.enabled or g.auth.did_wba_enabled:
        return None
    return NoAuth()


def _receiver_plan(cfg: Config, *, both: bool) -> ReceiverPlan:
    r = cfg.receiver
    settings = to_receiver_settings(cfg)
    client_id = r.client_id or default_client_id()
    settings.client_id = client_id
    auth = r.auth
    if both and cfg.gateway.auth.enabled and not auth.enabled:
        auth = cfg.gateway.auth  # the built-in receiver knows its own gateway's secret
    if auth.enabled:
        settings.auth = SharedSecretClient(
            resolve_secret(auth, "receiver.auth", []), client_id, nonce_source=os.urandom
        )
    if r.auth.did_wba_enabled:  # signs with its DID, plus the shared secret when enabled
        from .didfiles import receiver_auth, service_domains

        secret = settings.auth if isinstance(settings.auth, SharedSecretClient) else None
        # `both` dials its own gateway on loopback: sign the name that gateway checks
        service = service_domains(cfg.gateway)[0] if both else None
        settings.auth = receiver_auth(r.auth, secret, service)
    verify = "none" if r.tls.verify_mode == "none" else "required"
    check_hostname = verify != "none"
    if both:
        # `both` runs the receiver next to its own gateway: it dials that gateway's tunnel on
        # loopback, where the certificate's name (the public one) cannot match.
        g = cfg.gateway
        host = g.wss_host if is_loopback(g.wss_host) else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        settings.gateway_urls = [f"{'wss' if g.tls.enabled else 'ws'}://{host}:{g.wss_port}/"]
        check_hostname = False
    tls = TlsPolicy(False, r.tls.cert_file, r.tls.key_file, r.tls.ca_file, verify, check_hostname)
    if r.tcp_local_port is not None:  # AgentX's one-service case, named by the client id
        settings.tcp_services.setdefault(client_id, (r.tcp_local_addr, r.tcp_local_port))
    demo = r.backend == "demo" and not settings.tcp_services  # TCP only: HTTP gets 404
    return ReceiverPlan(
        settings, r.local_app_module, r.app_factory, demo, tls, r.shutdown_grace, r.interface
    )


def check_files(plan: Plan) -> None:
    """Fail early, with the key's name, when a certificate or key file is missing."""
    policies: list[tuple[str, TlsPolicy | None]] = []
    if plan.gateway is not None:
        policies.append(("gateway.tls", plan.gateway.http.tls))
    if plan.receiver is not None:
        policies.append(("receiver.tls", plan.receiver.tls))
    for section, policy in policies:
        if policy is None:
            continue
        for key in ("cert_file", "key_file", "ca_file"):
            path = getattr(policy, key)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(
                    f"[{section}] {key}: no such file: {path}", path=f"{section}.{key}"
                )


def _local_name(host: str, tls: bool) -> str:
    """A host to print in a URL for this machine: never a wildcard address; with TLS the name
    certificates for local use carry (``localhost``), not an address they rarely list."""
    if host in _WILDCARDS or is_loopback(host):
        return "localhost" if tls else ("127.0.0.1" if host in _WILDCARDS else host)
    return host


_WILDCARDS = ("0.0.0.0", "::", "[::]", "")


def ready_lines(plan: Plan, http_port: int, tunnel_port: int, admin_port: int | None) -> list[str]:
    """What a user sees once the gateway is up: where to point a browser or a receiver.

    A gateway worker prints nothing: it reports its ports to its supervisor, which prints
    these lines once for all of them (:mod:`anpx_host.workers`)."""
    assert plan.gateway is not None
    g = plan.gateway
    if g.worker is not None:
        g.worker.report_ready(http_port, tunnel_port, admin_port)
        return []
    scheme = "https" if g.http.tls else "http"
    host = _local_name(g.http.host, g.http.tls is not None)
    lines = [f"anpx gateway ready: open {scheme}://{_hostport(host, http_port)}/"]
    ws = "wss" if g.tunnel.tls else "ws"
    tunnel_host = _local_name(g.tunnel.host, g.tunnel.tls is not None)
    where = f"{ws}://{_hostport(tunnel_host, tunnel_port)}/"
    if g.tunnel.host in _WILDCARDS:
        where += " (listening on every address: use this machine's public name)"
    lines.append(f"  receivers connect to {where}")
    if admin_port:
        lines.append(f"  health and stats: http://{_hostport(g.admin.host, admin_port)}/stats")  # type: ignore[union-attr]
    return lines


def use_bound_ports(plan: Plan, tunnel_port: int) -> None:
    """``both``: the built-in receiver dials the tunnel port the gateway actually bound (the
    configured one may be 0, "pick a free port")."""
    if plan.mode != "both" or plan.receiver is None:
        return
    settings = plan.receiver.settings
    url = urlsplit(settings.gateway_urls[0])
    host = url.netloc.rpartition(":")[0] or url.netloc
    settings.gateway_urls = [f"{url.scheme}://{host}:{tunnel_port}/"]


def receiver_lines(plan: Plan) -> list[str]:
    """What a receiver-only user sees at start: what it serves and which gateways it dials."""
    if plan.receiver is None or plan.mode != "receiver":
        return []
    r = plan.receiver
    if r.app_spec is not None:
        what = f"app {r.app_spec}"
    elif r.settings.forward is not None:
        host, port = r.settings.forward
        what = f"http://{_hostport(host, port)}"
    elif r.settings.tcp_services and not r.demo:
        what = "no HTTP (TCP services only)"
    else:
        what = "the demo app"
    services = ", ".join(
        f"{name}={_hostport(*local)}" for name, local in r.settings.tcp_services.items()
    )
    if services:
        what += f" and tcp {services}"
    return [f"anpx receiver: serving {what} through {', '.join(r.settings.gateway_urls)}"]


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve_app(plan: ReceiverPlan) -> Any:
    """The ASGI app the receiver serves: the user's (a WSGI app wrapped), command mode
    (:mod:`anpx_command`, imported only when enabled), the demo, or None (forward mode)."""
    if plan.command is not None:
        from anpx_command import create_app

        assert plan.command_token is not None  # resolved with plan.command
        try:
            return create_app(plan.command, plan.command_token)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"[command] {exc}", path="command") from None
    if plan.app_spec is not None:
        from .apploader import load_app

        return load_app(plan.app_spec, factory=plan.factory, interface=plan.interface)
    if plan.demo:
        from .demo import app

        return app
    return None


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (structured concurrency wraps task errors)."""
    while isinstance(getattr(exc, "exceptions", None), (list, tuple)) and exc.exceptions:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def log_listening(http: Listen, tunnel: Listen, ports: BoundPorts) -> None:
    """The gateway's one line saying where it listens (both drivers)."""
    logging.getLogger("anpx.gateway").info(
        "gateway listening: %s://%s:%d/ (tunnel %s://%s:%d)",
        "https" if http.tls else "http",
        http.host,
        ports.http,
        "wss" if tunnel.tls else "ws",
        tunnel.host,
        ports.tunnel,
    )


def bind_failure(host: str, port: int, exc: OSError) -> StartupError:
    # asyncio rewrites strerror ("error while attempting to bind ..."); the errno is plainer
    reason = (os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)).lower()
    return StartupError(f"cannot listen on {_hostport(host, port)}: {reason}")


def receiver_embedding(
    config: ReceiverSettings | ReceiverConfig,
) -> tuple[ReceiverSettings, TlsPolicy]:
    """Settings and TLS policy for a receiver embedded in a user's program.

    Accepts the seed's ``ReceiverConfig`` (``ReceiverConfig(gateway_url=...)``) as well as the
    core's ``ReceiverSettings``.
    """
    if isinstance(config, ReceiverSettings):
        return with_entropy(config), TlsPolicy(False)
    plan = _receiver_plan(Config(receiver=config), both=False)
    return with_entropy(plan.settings), plan.tls


def with_entropy(settings: S) -> S:
    """``settings`` with ``mask_source = os.urandom`` where the embedder left it unset (the
    core draws no randomness itself; WebSocket masking keys must be unpredictable)."""
    if getattr(settings, "mask_source", None) is None:
        settings = replace(settings, mask_source=os.urandom)  # type: ignore[type-var]
    return settings


def gateway_embedding(
    config: GatewaySettings | GatewayConfig,
) -> tuple[GatewaySettings, GatewayPlan | None]:
    """Settings (and, from a ``GatewayConfig``, listeners) for an embedded gateway."""
    if isinstance(config, GatewaySettings):
        return config, None
    plan = _gateway_plan(Config(gateway=config), [])
    return plan.settings, plan


def read_credential(
    inline: str | None,
    file: str | None,
    env: str,
    section: str,
    key: str,
    what: str,
    warnings: list[str],
) -> bytes | None:
    """A secret from ``[section] key`` inline, else the file ``key_file``, else the environment
    variable ``env``; None when none is set. A file others may read earns a warning; an
    unreadable or empty file is a config error naming the key. Secrets are never printed."""
    if inline:
        return inline.encode()
    if file:
        try:
            with open(file, "rb") as f:
                value = f.read().strip()
            mode = os.stat(file).st_mode
        except OSError as exc:
            raise ConfigError(
                f"[{section}] {key}_file: cannot read {file}: {exc.strerror}",
                path=f"{section}.{key}_file",
            ) from None
        if mode & 0o077:
            warnings.append(f"{file} ({what}) can be read by other users: chmod 600 it")
        if not value:
            raise ConfigError(
                f"[{section}] {key}_file: {file} is empty", path=f"{section}.{key}_file"
            )
        return value
    from_env = os.environ.get(env, "").strip()
    return from_env.encode() if from_env else None


def resolve_secret(auth: AuthConfig, section: str, warnings: list[str]) -> bytes:
    """The shared secret: inline ``shared_secret``, else ``shared_secret_file``, else the
    ``ANPX_SHARED_SECRET`` environment variable."""
    secret = read_credential(
        auth.shared_secret, auth.shared_secret_file, SECRET_ENV, section, "shared_secret",
        "the shared secret", warnings,
    )  # fmt: skip
    if secret is None:
        raise ConfigError(
            f"[{section}] shared_secret: required when enabled = true "
            f"(or shared_secret_file, or the {SECRET_ENV} environment variable)",
            path=f"{section}.shared_secret",
        )
    return secret


def resolve_admin_token(g: GatewayConfig, warnings: list[str]) -> bytes | None:
    """The admin listener's bearer token: ``admin_token``, else ``admin_token_file``, else the
    ``ANPX_ADMIN_TOKEN`` environment variable. Required when ``admin_host`` is not loopback:
    /stats names receivers and routes, which the internet has no business reading."""
    token = read_credential(
        g.admin_token, g.admin_token_file, ADMIN_TOKEN_ENV, "gateway", "admin_token",
        "the admin token", warnings,
    )  # fmt: skip
    if token is None and not is_loopback(g.admin_host):
        raise ConfigError(
            f"[gateway] admin_token: required when admin_host ({g.admin_host}) is not a loopback "
            f"address (or admin_token_file, or the {ADMIN_TOKEN_ENV} environment variable); "
            "or set admin_port = 0 to serve no admin listener",
            path="gateway.admin_token",
        )
    return token


def resolve_command_token(command: CommandConfig, warnings: list[str]) -> bytes:
    """The command-mode API token: ``token``, else ``token_file``, else ``ANPX_COMMAND_TOKEN``.
    Command mode runs programs: without a token of at least 16 characters it does not start."""
    token = read_credential(
        command.token, command.token_file, COMMAND_TOKEN_ENV, "command", "token",
        "the command-mode token", warnings,
    )  # fmt: skip
    if token is None:
        raise ConfigError(
            "[command] token: command mode runs programs on this machine and will not start "
            f"without an API token (token, token_file, or the {COMMAND_TOKEN_ENV} environment variable)",
            path="command.token",
        )
    if len(token) < MIN_COMMAND_TOKEN:
        raise ConfigError(
            f"[command] token: expected at least {MIN_COMMAND_TOKEN} characters "
            "(e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            path="command.token",
        )
    return token


def default_client_id() -> str:
    """A receiver id stable per machine and user: UUID v5 of host name, machine id and user."""
    import getpass
    import platform
    import uuid

    machine = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                machine = f.read().strip()
                break
        except OSError:
            continue
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else ""
    name = f"{platform.node()}|{machine}|{user}"
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name))


def run_cli(argv: list[str] | None, prog: str, execute: Callable[[Plan, Any], int | None]) -> int:
    """``python -m <driver>``: parse, plan, then ``execute(plan, app)`` on the driver's loop.

    Returns the exit code: 0 after a clean drain, 1 when start-up failed (one line on
    stderr), 2 for a configuration error (one line).
    """
    import logging
    import sys

    from .cli import parse_or_exit
    from .logsetup import setup_logging

    mode, cfg = parse_or_exit(argv, prog)
    try:
        setup_logging(cfg.logging, debug=cfg.debug)
    except OSError as exc:  # e.g. the log file's directory does not exist
        reason = exc.strerror or str(exc)
        print(f"{prog}: [logging] file: cannot open {cfg.logging.file}: {reason}", file=sys.stderr)
        return 2
    from . import workers

    try:
        plan = make_plan(mode, cfg)
        check_files(plan)
        role = workers.worker_role()  # set when a supervisor started this process
        if role is not None:
            workers.apply_role(plan, role)
            workers.prefix_logs(role)
            role.watch_supervisor()
            plan.warnings.clear()  # the supervisor logged them once
        app = resolve_app(plan.receiver) if plan.receiver is not None else None
    except StartupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ConfigError as exc:
        if cfg.debug:  # the whole story, e.g. where inside the user's module an import failed
            import traceback

            traceback.print_exception(exc)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    for warning in plan.warnings:
        logging.getLogger("anpx").warning("%s", warning)
    if plan.gateway is not None and plan.gateway.workers > 1 and role is None:
        # the same command runs each worker: python -m <this driver's package> <argv>
        driver = execute.__module__.partition(".")[0]
        arguments = list(sys.argv[1:] if argv is None else argv)
        try:
            workers.supervise(
                plan,
                arguments,
                driver,
                cfg.gateway.worker_restart_delay,
                cfg.gateway.worker_receiver_wait,
            )
        except StartupError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_OK
    try:
        execute(plan, app)
    except BaseException as exc:
        err = first_error(exc)  # task errors arrive wrapped in exception groups
        if isinstance(err, StartupError):
            print(f"{prog}: {err}", file=sys.stderr)
            return EXIT_FAILURE
        raise
    return EXIT_OK
