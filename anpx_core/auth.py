"""Authentication of the tunnel handshake: the interface, "none", and the shared secret.

The receiver adds headers to its WebSocket upgrade request; the gateway
verifies them and adds a proof of its own to the 101 response, which the
receiver verifies in turn. Times here are wall-clock Unix seconds, given by the
caller (the cores derive them from the driver's clock).

Shared-secret scheme (``docs/protocol.md`` has the exact strings)::

    request headers   anpx-client-id, anpx-auth-timestamp, anpx-auth-nonce,
                      anpx-auth-signature = hex HMAC-SHA256(secret, canonical request)
    101 header        anpx-auth-proof     = hex HMAC-SHA256(secret, canonical answer)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .attempts import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_TRACKED, FailedAttempts
from .replay import MemoryReplayCache, ReplayCache
from .strict import StrictError, parse_uint

Headers = list[tuple[str, str]]

H_CLIENT_ID = "anpx-client-id"
H_TIMESTAMP = "anpx-auth-timestamp"
H_NONCE = "anpx-auth-nonce"
H_SIGNATURE = "anpx-auth-signature"
H_PROOF = "anpx-auth-proof"

DEFAULT_CLOCK_SKEW = 300.0  # seconds a timestamp may differ from the gateway's clock
DEFAULT_NONCE_CAPACITY = 100_000  # nonces remembered within the skew window
MAX_TIMESTAMP = 10**12 - 1  # Unix seconds: 12 ASCII digits at most (year 33658)
_NONCE = re.compile(r"[!-~]{16,128}")  # visible ASCII, as our receivers send hex


@dataclass(slots=True)
class Verdict:
    """The gateway's decision on one upgrade request."""

    ok: bool
    status: int = 101  # 401 / 429 when refused
    identity: str = ""  # who the receiver is, for logs and stats
    headers: Headers = field(default_factory=list)  # added to the 101 or to the refusal
    reason: str = ""  # for the gateway's log only; never sent to the peer
    wait: bool = False  # undecided: ask again after the driver fetched what it needs (didwba)


class ClientAuth(Protocol):
    def request_headers(self, host: str, path: str, wall: float) -> Headers:
        """Headers for the upgrade request; remembers what it needs to check the answer."""

    def check_response(self, headers: Headers) -> str | None:
        """None when the gateway proved itself, else why not (one log line)."""


class ServerAuth(Protocol):
    def check_request(
        self, host: str, path: str, headers: Headers, peer: str, wall: float
    ) -> Verdict: ...


def _get(headers: Headers, name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def refusal(
    attempts: FailedAttempts, peer: str, wall: float, reason: str, status: int = 401
) -> Verdict:
    """A failed handshake: counted for ``peer``'s address, and 429 once it is over the limit."""
    retry = attempts.record(peer, wall)
    if retry is None:
        return Verdict(False, status, reason=reason)
    return Verdict(
        False,
        429,
        headers=[("retry-after", str(retry))],
        reason=f"{reason}; more than {attempts.max_attempts} failed attempts from "
        f"{attempts.key(peer)} in a minute",
    )


class NoAuth:
    """No authentication: any receiver may connect (fine on loopback and in tests)."""

    def __init__(self, client_id: str = "") -> None:
        self.client_id = client_id

    def request_headers(self, host: str, path: str, wall: float) -> Headers:
        return [(H_CLIENT_ID, self.client_id)] if self.client_id else []

    def check_response(self, headers: Headers) -> str | None:
        return None

    def check_request(
        self, host: str, path: str, headers: Headers, peer: str, wall: float
    ) -> Verdict:
        return Verdict(True, identity=_get(headers, H_CLIENT_ID) or peer)


def request_string(host: str, path: str, client_id: str, timestamp: str, nonce: str) -> bytes:
    return "\n".join(("ANPX-AUTH-V1", host, path, client_id, timestamp, nonce)).encode()


def answer_string(host: str, path: str, client_id: str, nonce: str) -> bytes:
    return "\n".join(("ANPX-GATEWAY-V1", host, path, client_id, nonce)).encode()


def _mac(secret: bytes, message: bytes) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class SharedSecretClient:
    """The receiver's side: sign the upgrade, check the gateway's proof.

    ``nonce_source(n)`` returns ``n`` unpredictable bytes (the host passes ``os.urandom``);
    the core reads no randomness of its own.
    """

    def __init__(
        self, secret: bytes, client_id: str, *, nonce_source: Callable[[int], bytes]
    ) -> None:
        if not secret:
            raise ValueError("the shared secret is empty")
        self._secret = secret
        self.client_id = client_id
        self._nonce_source = nonce_source
        self._expected: str | None = None

    def request_headers(self, host: str, path: str, wall: float) -> Headers:
        timestamp = str(int(wall))
        nonce = self._nonce_source(16).hex()
        signature = _mac(self._secret, request_string(host, path, self.client_id, timestamp, nonce))
        self._expected = _mac(self._secret, answer_string(host, path, self.client_id, nonce))
        return [
            (H_CLIENT_ID, self.client_id),
            (H_TIMESTAMP, timestamp),
            (H_NONCE, nonce),
            (H_SIGNATURE, signature),
        ]

    def check_response(self, headers: Headers) -> str | None:
        proof = _get(headers, H_PROOF)
        if self._expected is None:
            return "no handshake was signed"
        if proof is None:
            return "the gateway sent no anpx-auth-proof: it does not know the shared secret (or does not check it)"
        if not hmac.compare_digest(proof.lower().encode(), self._expected.encode()):
            return "the gateway's anpx-auth-proof is wrong: it does not know the shared secret"
        return None


class SharedSecretServer:
    """The gateway's side: constant-time check, clock skew, replayed nonces, failure limits.

    The signature is checked first: a correctly signed handshake is admitted whatever other
    handshakes from its address did (subject to the skew and replay checks). Only failed
    handshakes count, in ``attempts`` (:mod:`anpx_core.attempts`, shared with DID-WBA when
    both are on): ``max_attempts`` per address per minute, then 429 instead of 401.

    Memory is bounded: nonces are kept only while their timestamp is inside the skew window
    (at most ``nonce_capacity``; when full, new handshakes are refused with 429 rather than
    forgetting a nonce that could then be replayed), and failure counters for at most
    ``max_tracked`` addresses.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        nonce_capacity: int = DEFAULT_NONCE_CAPACITY,
        max_tracked: int = DEFAULT_MAX_TRACKED,
        attempts: FailedAttempts | None = None,
        replay: ReplayCache | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the shared secret is empty")
        self._secret = secret
        self.clock_skew = clock_skew
        self.nonce_capacity = nonce_capacity
        # nonce -> expiry (wall seconds); shared across a fleet through the host's store
        self.replay: ReplayCache = replay or MemoryReplayCache(nonce_capacity)
        self.attempts = attempts or FailedAttempts(max_attempts, max_tracked=max_tracked)

    @property
    def max_attempts(self) -> int:
        return self.attempts.max_attempts

    @property
    def tracked_addresses(self) -> int:
        return self.attempts.tracked

    def check_request(
        self, host: str, path: str, headers: Headers, peer: str, wall: float
    ) -> Verdict:
        """``peer``: the client's address (a port, if any, is ignored)."""
        self.replay.forget_expired(wall)
        client_id = _get(headers, H_CLIENT_ID) or ""
        timestamp = _get(headers, H_TIMESTAMP)
        nonce = _get(headers, H_NONCE)
        signature = _get(headers, H_SIGNATURE)
        if timestamp is None or nonce is None or signature is None:
            return self._fail(peer, wall, "no authentication headers")
        # Strict ASCII digits: "²".isdigit() is true but int() refuses it.
        try:
            stamp = parse_uint(timestamp, MAX_TIMESTAMP, H_TIMESTAMP)
        except StrictError as exc:
            return self._fail(peer, wall, f"malformed authentication headers: {exc}")
        if not _NONCE.fullmatch(nonce):
            return self._fail(peer, wall, "malformed authentication headers")
        expected = _mac(self._secret, request_string(host, path, client_id, timestamp, nonce))
        if not hmac.compare_digest(signature.lower().encode(), expected.encode()):
            return self._fail(peer, wall, f"bad signature for client {client_id!r}")
        # Signed with the secret: never refused for what others did from this address.
        if abs(stamp - wall) > self.clock_skew:
            return self._fail(
                peer,
                wall,
                f"timestamp {timestamp} is {stamp - wall:+.0f}s from ours (allowed ±{self.clock_skew:.0f}s)",
            )
        fresh = self.replay.remember(nonce, stamp + self.clock_skew, wall)
        if fresh is False:
            return self._fail(peer, wall, f"replayed nonce from client {client_id!r}")
        if fresh is None:
            return Verdict(False, 429, headers=[("retry-after", "5")], reason="nonce cache full")
        proof = _mac(self._secret, answer_string(host, path, client_id, nonce))
        return Verdict(True, identity=client_id or peer, headers=[(H_PROOF, proof)])

    def _fail(self, peer: str, wall: float, reason: str) -> Verdict:
        return refusal(self.attempts, peer, wall, reason)
