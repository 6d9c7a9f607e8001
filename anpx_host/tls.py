"""TLS for both drivers: ``ssl.SSLContext`` from a launch TlsPolicy (TLS 1.2 minimum), and
one line describing a socket or TLS error for the logs."""

from __future__ import annotations

import ssl

from .errors import StartupError
from .launch import GatewayPlan, Listen, TlsPolicy

_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def make_context(policy: TlsPolicy | None) -> ssl.SSLContext | None:
    if policy is None:
        return None
    purpose = ssl.Purpose.CLIENT_AUTH if policy.server_side else ssl.Purpose.SERVER_AUTH
    try:
        context = ssl.create_default_context(purpose, cafile=policy.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if policy.cert_file:
            context.load_cert_chain(policy.cert_file, policy.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"cannot load TLS files ({policy.cert_file or policy.ca_file}): {exc}"
        ) from exc
    if policy.server_side:
        context.verify_mode = _VERIFY[policy.verify]
    else:
        context.check_hostname = policy.check_hostname
        context.verify_mode = _VERIFY[policy.verify]
    return context


def describe_error(exc: BaseException) -> str:
    """One line for a socket error; TLS failures say what the peer objected to."""
    cause = exc.__cause__ or exc.__context__
    if not isinstance(exc, ssl.SSLError) and isinstance(cause, ssl.SSLError):
        exc = cause  # trio wraps TLS errors
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return str(exc) or type(exc).__name__


def gateway_listens(plan: GatewayPlan | None) -> tuple[Listen, Listen, Listen | None]:
    """The listeners (http, tunnel, admin) of a gateway plan, TLS contexts made; without a
    plan the embedding defaults: HTTP on 127.0.0.1:8080, the tunnel on 8765, no admin."""
    if plan is None:
        return Listen("127.0.0.1", 8080), Listen("127.0.0.1", 8765), None
    http, tunnel, admin = plan.http, plan.tunnel, plan.admin
    return (
        Listen(
            http.host, http.port, make_context(http.tls), http.reuse_port, http.hold_for_receiver
        ),
        Listen(tunnel.host, tunnel.port, make_context(tunnel.tls), tunnel.reuse_port),
        None if admin is None else Listen(admin.host, admin.port, make_context(admin.tls)),
    )
