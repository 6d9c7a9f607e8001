"""Pluggable authentication of the tunnel handshake.

The receiver adds headers to its WebSocket upgrade request; the gateway
verifies them and may add a proof of its own to the 101 response, which the
receiver then verifies. :class:`NoAuth` accepts everyone; the shared-secret
authenticator lives beside it once written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

Headers = list[tuple[str, str]]


@dataclass(slots=True)
class Verdict:
    """The gateway's decision on one upgrade request."""

    ok: bool
    status: int = 101  # 401 / 429 when refused
    identity: str = ""  # who the receiver is, for logs and stats
    headers: Headers = field(default_factory=list)  # added to the 101 or to the refusal
    reason: str = ""  # for the gateway's log only; never sent to the peer


class ClientAuth(Protocol):
    def request_headers(self, host: str, path: str, now: float) -> Headers:
        """Headers for the upgrade request; remembers what it needs to check the answer."""

    def check_response(self, headers: Headers) -> str | None:
        """None when the gateway proved itself, else why not (one log line)."""


class ServerAuth(Protocol):
    def check_request(
        self, host: str, path: str, headers: Headers, peer: str, now: float
    ) -> Verdict: ...


class NoAuth:
    """No authentication: any receiver may connect (fine on loopback and in tests)."""

    def request_headers(self, host: str, path: str, now: float) -> Headers:
        return []

    def check_response(self, headers: Headers) -> str | None:
        return None

    def check_request(
        self, host: str, path: str, headers: Headers, peer: str, now: float
    ) -> Verdict:
        client_id = next((v for n, v in headers if n.lower() == "anpx-client-id"), "")
        return Verdict(True, identity=client_id or peer)
