"""Who may use command mode: a bearer token, Host/Origin checks, throttled failures, audit.

Command mode runs programs on this machine, so every request is authenticated. The token
is compared in constant time (both sides hashed first, so not even its length leaks). A
client address that keeps failing is throttled by a token bucket: each failure takes a
token, and while its bucket is empty every request from it - a right token included -
is answered 429, so guessing cannot go faster than ``failure_rate``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from anpx_core.ratelimit import RateLimiter, address_key, retry_after

__all__ = ["Guard", "Refusal", "audit_logger", "client_of"]

MAX_BLOCKED = 65_536
audit_log = logging.getLogger("anpx.command.audit")


class Refusal(Exception):
    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


def client_of(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _matches(value: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern == "*" or value == pattern:
            return True
        if pattern.endswith(":*") and value.startswith(pattern[:-1]):
            return True
    return False


class Guard:
    def __init__(
        self,
        token: bytes,
        *,
        failure_rate: float = 0.1,
        failure_burst: int = 5,
        allowed_hosts: tuple[str, ...] = (),
        allowed_origins: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not token:
            raise ValueError("command mode needs a token")
        self._digest = hashlib.sha256(token).digest()
        self._failures = RateLimiter(failure_rate, failure_burst)
        self._blocked: OrderedDict[str, float] = OrderedDict()
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.clock = clock

    def check(self, scope: dict[str, Any]) -> None:
        """Raise :class:`Refusal` unless the request may proceed."""
        origin = _header(scope, b"origin")
        if origin is not None and not _matches(origin.decode("latin-1"), self.allowed_origins):
            raise Refusal(403, "origin not allowed")
        host = (_header(scope, b"host") or b"").decode("latin-1")
        if self.allowed_hosts and not _matches(host, self.allowed_hosts):
            raise Refusal(421, "host not allowed")
        now = self.clock()
        key = address_key(client_of(scope))
        until = self._blocked.get(key)
        if until is not None:
            if now < until:
                raise self._throttled(until - now)
            del self._blocked[key]
        if self._token_ok(_header(scope, b"authorization")):
            return
        wait = self._failures.allow(key, now)
        audit("auth_failed", who=client_of(scope), path=scope.get("path", ""))
        if wait is not None:
            self._block(key, now + wait)
            raise self._throttled(wait)
        raise Refusal(401, "unauthorized", [(b"www-authenticate", b'Bearer realm="anpx"')])

    def _token_ok(self, header: bytes | None) -> bool:
        given = b""
        if header is not None and header[:7].lower() == b"bearer ":
            given = header[7:].strip()
        # Hash both sides: compare_digest is constant-time only for equal lengths.
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._digest) and bool(given)

    def _block(self, key: str, until: float) -> None:
        self._blocked[key] = until
        self._blocked.move_to_end(key)
        while len(self._blocked) > MAX_BLOCKED:
            self._blocked.popitem(last=False)

    @staticmethod
    def _throttled(wait: float) -> Refusal:
        return Refusal(
            429, "too many failed attempts", [(b"retry-after", retry_after(wait).encode())]
        )


def audit(event: str, **fields: Any) -> None:
    """One JSON line per security event on the ``anpx.command.audit`` logger."""
    audit_log.info("%s", json.dumps({"event": event, **fields}, default=str, sort_keys=True))


def audit_logger(path: str | None) -> None:
    """Audit lines are logged at INFO whatever the log level; also appended to ``path``."""
    audit_log.setLevel(logging.INFO)
    if path is None:
        return
    for handler in audit_log.handlers:
        if getattr(handler, "baseFilename", None) == path:
            return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    audit_log.addHandler(handler)
