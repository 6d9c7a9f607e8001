"""DID-WBA authentication of receivers: the header forms, their verification, the document cache.

A receiver proves who it is with its DID (``did:wba:host[:path...]``): it signs the tunnel's
WebSocket upgrade with a key its DID document lists under ``authentication``; the gateway
fetches that document (``https://host/path/did.json`` or ``https://host/.well-known/did.json``)
and checks the signature. Three forms of the proof are accepted:

* legacy (``agent-connect`` 0.3, the reference anp-proxy)::

      Authorization: DIDWba did="...", nonce="...", timestamp="2026-01-01T00:00:00Z",
                     verification_method="key-1", signature="<base64url>"

  signed over SHA-256 of the JCS form of ``{"did", "nonce", "service", "timestamp"}``;
* ``v="1.1"`` (``anp`` 1.x): the same header with ``v="1.1"``, signing ``aud`` instead of
  ``service``;
* RFC 9421 HTTP Message Signatures (``anp`` 1.x's default): ``Signature-Input`` and
  ``Signature`` covering ``@authority`` or ``@target-uri``, with ``created``, ``nonce`` and
  ``keyid`` (``did#fragment``).

``service`` / ``aud`` / ``@authority`` must name this gateway (``service_domains``), so a
proof made for another gateway cannot be replayed here. Each nonce is accepted once while its
timestamp is inside the window. A valid signature is made from a document; a document the
cache does not hold is asked for (:class:`DocumentCache.on_wanted`) and the handshake waits
(``Verdict.wait``) until the driver has fetched it: this module does no I/O and reads no clock.

Signatures are checked with the ``cryptography`` package (the ``anpx[did]`` extra), imported
only when a key is first used, so ``import anpx_core`` stays light.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .attempts import DEFAULT_MAX_ATTEMPTS, FailedAttempts
from .auth import Headers, SharedSecretClient, SharedSecretServer, Verdict, _get, refusal
from .replay import MemoryReplayCache, ReplayCache

SCHEME = "DIDWba"
H_AUTHORIZATION = "authorization"
H_SIGNATURE_INPUT = "signature-input"
H_SIGNATURE = "signature"

#: A refused receiver's WebSocket is closed with this code and reason (the reference's).
DID_REFUSAL_CODE = 4003
DID_REFUSAL = "DID authentication failed"
#: Header forms the receiver can send (``[receiver.auth] did_header``).
HEADER_FORMS = ("legacy", "1.1")
DEFAULT_MAX_AGE = 300.0  # a timestamp may be this many seconds old (the reference's 5 min)
DEFAULT_MAX_FUTURE = 60.0  # ... or this far ahead of the gateway's clock (the reference's 1 min)
DEFAULT_NONCE_CAPACITY = 100_000
DEFAULT_CACHE_TTL = 300.0  # seconds a fetched document is trusted before it is fetched again
DEFAULT_FAILURE_TTL = 30.0  # seconds a failed fetch is remembered (no refetch storm)
DEFAULT_CACHE_CAPACITY = 10_000  # documents kept (fetched ones; pinned ones always stay)
DEFAULT_MAX_PENDING = 64  # DIDs being fetched at once; more handshakes wait their turn or fail
DEFAULT_MAX_DOCUMENT_BYTES = 64 * 1024
MAX_HEADER_LENGTH = 8192
MAX_DID_LENGTH = 512

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]*")  # visible ASCII without '"' and '\'
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?")
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=@%-]{1,128}")
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


class DidError(ValueError):
    """Why a proof, a DID or a document was not accepted (for the log, never for the peer)."""


# --- DIDs and documents -------------------------------------------------------------------


def did_document_url(did: str) -> str:
    """``did:wba:example.com:user:alice`` -> ``https://example.com/user/alice/did.json``."""
    if len(did) > MAX_DID_LENGTH or not did.startswith("did:wba:"):
        raise DidError(f"not a did:wba DID: {_short(did)}")
    host, *segments = did[len("did:wba:") :].split(":")
    host = unquote(host)  # a port is written %3A
    if not _HOST.fullmatch(host) or (":" in host and int(host.rsplit(":", 1)[1]) > 65535):
        raise DidError(f"DID {_short(did)} has an invalid host")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or unquote(segment) in (".", ".."):
            raise DidError(f"DID {_short(did)} has an invalid path segment")
    if segments:
        return f"https://{host}/{'/'.join(segments)}/did.json"
    return f"https://{host}/.well-known/did.json"


def did_host(did: str) -> str:
    """The host name a DID's document is fetched from, lower case, without the port."""
    did_document_url(did)  # DidError unless well formed
    host = unquote(did[len("did:wba:") :].split(":", 1)[0])
    return host.rsplit(":", 1)[0].lower() if ":" in host else host.lower()


def _ip_like(host: str) -> bool:
    """An IPv4 address in any form getaddrinfo accepts ("127.0.0.1", "127.1", "2130706433",
    "0x7f.1"): a DNS name never ends in a label of digits (top-level domains are letters).
    ``host`` has passed ``_HOST`` (ASCII; IPv6 literals cannot occur in a did:wba)."""
    last = host.rsplit(".", 1)[-1]
    return last.isdigit() or last.startswith("0x")


def host_matches(host: str, pattern: str) -> bool:
    """``pattern``: a host name (exact), ``*.example.org`` (its subdomains, at any depth, not
    example.org itself) or ``*`` (any host). Both lower case."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def parse_document(
    did: str, body: bytes, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
) -> dict[str, Any]:
    """A fetched or pinned document, checked to be a JSON object whose ``id`` is ``did``."""
    if len(body) > max_bytes:
        raise DidError(f"the DID document of {did} is over {max_bytes} bytes")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise DidError(f"the DID document of {did} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DidError(f"the DID document of {did} is not a JSON object")
    if document.get("id") != did:
        raise DidError(
            f"the DID document fetched for {did} names another DID: {_short(str(document.get('id')))}"
        )
    if not isinstance(document.get("authentication", []), list):
        raise DidError(f"the DID document of {did} has a malformed authentication list")
    return document


def authentication_method(document: dict[str, Any], method_id: str) -> dict[str, Any] | None:
    """The verification method ``method_id`` if (and only if) it is listed under ``authentication``.

    An entry is either embedded or a reference to ``verificationMethod``; a key listed only in
    ``verificationMethod`` (e.g. for key agreement) may not authenticate.
    """
    entries, methods = document.get("authentication"), document.get("verificationMethod")
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if isinstance(entry, dict) and entry.get("id") == method_id:
            return entry
        if isinstance(entry, str) and entry == method_id:
            for method in methods if isinstance(methods, list) else ():
                if isinstance(method, dict) and method.get("id") == method_id:
                    return method
            return None
    return None


def first_authentication_method(document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The key a receiver signs with: the first ``authentication`` entry, as anp does."""
    entries = document.get("authentication")
    if not isinstance(entries, list) or not entries:
        raise DidError("the DID document has no authentication method")
    first = entries[0]
    method_id = (
        first if isinstance(first, str) else first.get("id") if isinstance(first, dict) else None
    )
    method = authentication_method(document, method_id) if isinstance(method_id, str) else None
    if method is None or not isinstance(method_id, str):
        raise DidError("the DID document's first authentication method is not defined in it")
    return method_id, method


# --- keys and signatures (cryptography, imported on first use) -----------------------------


def _b64url(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise DidError("not base64url")
    return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _b58decode(text: str) -> bytes:
    if len(text) > 128 or any(c not in _B58 for c in text):
        raise DidError("not base58")
    number = 0
    for char in text:
        number = number * 58 + _B58.index(char)
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def public_key(method: dict[str, Any]) -> Any:
    """The ``cryptography`` public key of a verification method; DidError if unsupported."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    kind = method.get("type")
    jwk = method.get("publicKeyJwk")
    try:
        if isinstance(jwk, dict):
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "d" not in jwk:
                return ed25519.Ed25519PublicKey.from_public_bytes(_b64url(str(jwk.get("x"))))
            curves = {"secp256k1": ec.SECP256K1, "P-256": ec.SECP256R1}
            curve = curves.get(str(jwk.get("crv")))
            if jwk.get("kty") == "EC" and curve is not None and "d" not in jwk:
                x = int.from_bytes(_b64url(str(jwk.get("x"))), "big")
                y = int.from_bytes(_b64url(str(jwk.get("y"))), "big")
                return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
            raise DidError(f"unsupported JWK in verification method of type {kind}")
        raw: bytes | None = None
        multibase = method.get("publicKeyMultibase")
        if isinstance(multibase, str) and multibase.startswith("z"):
            raw = _b58decode(multibase[1:])
        elif isinstance(method.get("publicKeyBase58"), str):
            raw = _b58decode(method["publicKeyBase58"])
        if raw is not None:
            if kind == "EcdsaSecp256k1VerificationKey2019":
                return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), raw)
            if kind in ("Ed25519VerificationKey2018", "Ed25519VerificationKey2020", "Multikey"):
                if len(raw) == 34 and raw[:2] == b"\xed\x01":  # the multicodec prefix
                    raw = raw[2:]
                return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise DidError(f"malformed public key in verification method: {exc}") from None
    raise DidError(f"unsupported verification method type {_short(str(kind))}")


def _verify(key: Any, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey):
            size = (key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:  # r || s, as anp sends it
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(utils.encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def sign(private_key: Any, message: bytes) -> bytes:
    """A signature as the DID-WBA forms carry it: raw Ed25519, or r || s for ECDSA/SHA-256."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        r, s = utils.decode_dss_signature(private_key.sign(message, ec.ECDSA(hashes.SHA256())))
        size = (private_key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise DidError(f"unsupported private key type {type(private_key).__name__}")


# --- the header forms ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proof:
    """What a receiver's upgrade request claims, parsed but not yet checked."""

    did: str
    method_id: str  # did#fragment
    nonce: str
    timestamp: float  # Unix seconds
    signature: bytes
    form: str  # "legacy" | "1.1" | "http-signature"
    message: bytes = b""  # what was signed, for the legacy forms without the domain
    timestamp_text: str = ""
    version: str = ""
    # RFC 9421: the covered components and the signature-params as sent
    components: tuple[str, ...] = ()
    params_text: str = ""
    expires: float | None = None


def canonical_json(fields: dict[str, str]) -> bytes:
    """RFC 8785 (JCS) form of a flat object of ASCII strings: sorted keys, no spaces."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def legacy_message(proof: Proof, domain: str) -> bytes:
    """SHA-256 of the JCS object the legacy and 1.1 forms sign (the key hashes it again)."""
    field = "aud" if proof.form == "1.1" else "service"
    payload = {
        "nonce": proof.nonce,
        "timestamp": proof.timestamp_text,
        field: domain,
        "did": proof.did,
    }
    return hashlib.sha256(canonical_json(payload)).digest()


def parse_authorization(value: str) -> Proof:
    """``DIDWba did="...", nonce="...", ...`` -> Proof; DidError on anything else."""
    if len(value) > MAX_HEADER_LENGTH:
        raise DidError("Authorization header too long")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        raise DidError(f"Authorization scheme is not {SCHEME}")
    params: dict[str, str] = {}
    for item in rest.split(","):
        name, eq, quoted = item.strip().partition("=")
        name = name.strip().lower()
        quoted = quoted.strip()
        if not eq or not _TOKEN.fullmatch(name) or len(quoted) < 2:
            raise DidError("malformed DIDWba parameter")
        if quoted[0] != '"' or quoted[-1] != '"' or not _VALUE.fullmatch(quoted[1:-1]):
            raise DidError(f"malformed DIDWba parameter {name}")
        if name in params:
            raise DidError(f"DIDWba parameter {name} given twice")
        params[name] = quoted[1:-1]
    missing = [
        k
        for k in ("did", "nonce", "timestamp", "verification_method", "signature")
        if k not in params
    ]
    if missing:
        raise DidError(f"DIDWba header without {', '.join(missing)}")
    version = params.get("v", "")
    if version and not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3})?", version):
        raise DidError("malformed DIDWba version")
    # no v: the legacy form (agent-connect); v >= 1.1 signs "aud" (anp 1.x)
    form = "1.1" if version and tuple(map(int, version.split("."))) >= (1, 1) else "legacy"
    did = params["did"]
    fragment = params["verification_method"]
    method_id = fragment if fragment.startswith(did + "#") else f"{did}#{fragment}"
    _check_nonce(params["nonce"])
    return Proof(
        did=did,
        method_id=method_id,
        nonce=params["nonce"],
        timestamp=parse_timestamp(params["timestamp"]),
        signature=_b64url(params["signature"]),
        form=form,
        timestamp_text=params["timestamp"],
        version=version,
    )


def _check_nonce(nonce: str) -> None:
    if not 8 <= len(nonce) <= 128:
        raise DidError("nonce shorter than 8 or longer than 128 characters")


def parse_signature_input(signature_input: str, signature: str) -> Proof:
    """RFC 9421 ``Signature-Input`` / ``Signature`` (one label) -> Proof."""
    if len(signature_input) > MAX_HEADER_LENGTH or len(signature) > MAX_HEADER_LENGTH:
        raise DidError("signature header too long")
    # stripped first: a lazy group before trailing spaces would backtrack quadratically
    match = re.fullmatch(r"([a-zA-Z0-9_-]{1,64})=(\(([^()]*)\)(.*))", signature_input.strip())
    sig_match = re.fullmatch(r"\s*([a-zA-Z0-9_-]{1,64})=:([A-Za-z0-9+/=]*):\s*", signature)
    if not match or not sig_match:
        raise DidError("malformed Signature-Input or Signature (one label expected)")
    if match.group(1) != sig_match.group(1):
        raise DidError("Signature-Input and Signature labels differ")
    inner = match.group(3).strip()
    components = tuple(re.findall(r'"([^"]+)"', inner))
    if not components or " ".join(f'"{c}"' for c in components) != inner:
        raise DidError("malformed covered components")
    params: dict[str, str] = {}
    for item in match.group(4).split(";")[1:]:
        name, eq, raw = item.strip().partition("=")
        if not eq or not _TOKEN.fullmatch(name) or name in params:
            raise DidError("malformed signature parameter")
        params[name] = raw
    keyid = _sf_string(params.get("keyid"), "keyid")
    nonce = _sf_string(params.get("nonce"), "nonce")
    _check_nonce(nonce)
    created = _sf_integer(params.get("created"), "created")
    expires = _sf_integer(params["expires"], "expires") if "expires" in params else None
    did, hash_, fragment = keyid.partition("#")
    if not hash_ or not fragment:
        raise DidError("keyid is not did#fragment")
    try:
        signature_bytes = base64.b64decode(sig_match.group(2), validate=True)
    except ValueError:
        raise DidError("Signature is not base64") from None
    return Proof(
        did=did,
        method_id=keyid,
        nonce=nonce,
        timestamp=float(created),
        signature=signature_bytes,
        form="http-signature",
        components=components,
        params_text=match.group(2),
        expires=None if expires is None else float(expires),
    )


def _sf_string(raw: str | None, name: str) -> str:
    if (
        raw is None
        or len(raw) < 2
        or raw[0] != '"'
        or raw[-1] != '"'
        or not _VALUE.fullmatch(raw[1:-1])
    ):
        raise DidError(f"signature parameter {name} missing or malformed")
    return raw[1:-1]


def _sf_integer(raw: str | None, name: str) -> int:
    if raw is None or not re.fullmatch(r"[0-9]{1,15}", raw):
        raise DidError(f"signature parameter {name} missing or malformed")
    return int(raw)


def signature_base(
    proof: Proof, method: str, target_uri: str, authority: str, headers: Headers
) -> bytes:
    """The RFC 9421 signature base for the components the proof covers."""
    lines = []
    for component in proof.components:
        if component == "@method":
            value = method
        elif component == "@target-uri":
            value = target_uri
        elif component == "@authority":
            value = authority
        elif component == "@path":
            value = target_uri.split(authority, 1)[-1].split("?", 1)[0] or "/"
        elif component.startswith("@"):
            raise DidError(f"unsupported covered component {_short(component)}")
        else:
            header = _get(headers, component.lower())
            if header is None:
                raise DidError(f"covered header {_short(component)} is missing")
            value = header
        lines.append(f'"{component}": {value}')
    lines.append(f'"@signature-params": {proof.params_text}')
    return "\n".join(lines).encode()


# --- timestamps without a clock module -------------------------------------------------------


def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def parse_timestamp(text: str) -> float:
    """ISO 8601 date-time with Z or an offset -> Unix seconds; DidError otherwise."""
    m = _TIMESTAMP.fullmatch(text)
    if not m:
        raise DidError("timestamp is not an ISO 8601 date-time with a time zone")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days_in = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    if (
        not (1 <= month <= 12 and 1 <= day <= days_in[month - 1])
        or hour > 23
        or minute > 59
        or second > 60
    ):
        raise DidError("timestamp out of range")
    seconds: float = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    if m.group(7):
        seconds += float("0" + m.group(7))
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return float(seconds)


def format_timestamp(wall: float) -> str:
    """Unix seconds -> ``YYYY-MM-DDTHH:MM:SSZ`` (what anp sends)."""
    days, rest = divmod(int(wall), 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return f"{year:04d}-{month:02d}-{day:02d}T{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}Z"


def _short(text: str) -> str:
    text = text.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= 80 else text[:77] + "..."


# --- the document cache ----------------------------------------------------------------------


class DocumentCache:
    """DID documents: pinned ones (never expire, never fetched) and fetched ones (TTL).

    ``lookup`` answers from the cache or asks for the document by calling ``on_wanted(did)``
    (set by the driver, which fetches it and calls :meth:`store` or :meth:`failed`). At most
    ``max_pending`` fetches are asked for at once; failures are remembered ``failure_ttl``
    seconds so a refused DID does not make the gateway fetch again and again.

    Which hosts are fetched from (a peer chooses the DID, so the URL: server-side request
    forgery): ``fetch_hosts`` lists host names and ``*.suffix`` patterns (``*`` alone: any
    host), and the driver may then connect to whatever address they resolve to. None (the
    default) means any host *name*: IP literals are refused here, and :attr:`public_only`
    tells the driver to refuse loopback, private, link-local and other non-public addresses
    when it connects.
    """

    def __init__(
        self,
        pinned: dict[str, dict[str, Any]] | None = None,
        *,
        fetch: bool = True,
        ttl: float = DEFAULT_CACHE_TTL,
        failure_ttl: float = DEFAULT_FAILURE_TTL,
        capacity: int = DEFAULT_CACHE_CAPACITY,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        fetch_hosts: Iterable[str] | None = None,
    ) -> None:
        self.pinned = dict(pinned or {})
        self.fetch_hosts = None if fetch_hosts is None else tuple(h.lower() for h in fetch_hosts)
        self.fetch = fetch
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.capacity = capacity
        self.max_pending = max_pending
        self.max_document_bytes = max_document_bytes
        self.on_wanted: Callable[[str], None] | None = None
        # how the driver fetches: its timeout, and a CA bundle (None: the system's)
        self.fetch_timeout = 5.0
        self.ca_file: str | None = None
        self.pending: set[str] = set()
        self._fetched: OrderedDict[str, tuple[float, dict[str, Any] | None, str]] = OrderedDict()

    @property
    def public_only(self) -> bool:
        """The driver's fetch must connect to public addresses only (no explicit host list)."""
        return self.fetch_hosts is None

    def lookup(self, did: str, wall: float, *, may_fetch: bool = True) -> dict[str, Any] | None:
        """The document, or None while it is being fetched; DidError when it cannot be had.

        ``may_fetch`` false: answer only from what is pinned, cached or already being fetched.
        """
        if did in self.pinned:
            return self.pinned[did]
        entry = self._fetched.get(did)
        if entry is not None:
            expiry, document, why = entry
            if wall < expiry:
                if document is None:
                    raise DidError(why)
                return document
            del self._fetched[did]
        if not self.fetch:
            raise DidError(f"{did} is not among the pinned DID documents")
        url = did_document_url(did)  # DidError for a DID that cannot be fetched
        if did not in self.pending:
            if not may_fetch:
                raise DidError(f"{url} not fetched: too many failed handshakes from this address")
            self._check_host(did)
            if self.on_wanted is None:
                raise DidError(f"no resolver to fetch {url}")
            if len(self.pending) >= self.max_pending:
                raise DidError(f"{self.max_pending} DID documents are being fetched already")
            self.pending.add(did)
            self.on_wanted(did)
        return None

    def _check_host(self, did: str) -> None:
        host = did_host(did)
        if self.fetch_hosts is None:
            if _ip_like(host):  # names only: what they resolve to is checked on connecting
                raise DidError(
                    f"the host of {_short(did)} is an IP address: not fetched unless "
                    "did_fetch_hosts lists it"
                )
        elif not any(host_matches(host, pattern) for pattern in self.fetch_hosts):
            raise DidError(f"the host of {_short(did)} is not in did_fetch_hosts")

    def store(self, did: str, body: bytes, wall: float) -> None:
        """The driver fetched ``did``'s document (bytes as served); checks and caches it."""
        self.pending.discard(did)
        try:
            document = parse_document(did, body, self.max_document_bytes)
        except DidError as exc:
            self.failed(did, str(exc), wall)
            return
        self._remember(did, (wall + self.ttl, document, ""))

    def failed(self, did: str, why: str, wall: float) -> None:
        """The driver could not fetch ``did``'s document; ``why`` goes to the log."""
        self.pending.discard(did)
        self._remember(did, (wall + self.failure_ttl, None, why))

    def _remember(self, did: str, entry: tuple[float, dict[str, Any] | None, str]) -> None:
        self._fetched[did] = entry
        self._fetched.move_to_end(did)
        while len(self._fetched) > self.capacity:
            self._fetched.popitem(last=False)


# --- the gateway's side ----------------------------------------------------------------------


class DidWbaServer:
    """Verifies a receiver's DID-WBA proof; the receiver's identity is its DID.

    With ``secret`` (a :class:`SharedSecretServer`) the receiver must pass both checks and the
    gateway proves itself back with the HMAC answer; without, a verified DID is enough.

    Failed handshakes are counted per address by the same rules as the shared secret's
    (:mod:`anpx_core.attempts`; with ``secret``, in its limiter, so each failure counts once):
    refused with a 4003 close, then 429 past ``max_attempts`` a minute. A correctly signed
    handshake is admitted from any address.
    """

    def __init__(
        self,
        cache: DocumentCache,
        service_domains: list[str],
        *,
        allowed_dids: list[str] | None = None,
        max_age: float = DEFAULT_MAX_AGE,
        max_future: float = DEFAULT_MAX_FUTURE,
        nonce_capacity: int = DEFAULT_NONCE_CAPACITY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        secret: SharedSecretServer | None = None,
        replay: ReplayCache | None = None,
    ) -> None:
        if not service_domains:
            raise ValueError("DID-WBA needs the gateway's own host name(s) to check service/aud")
        self.cache = cache
        self.service_domains = [d.lower() for d in service_domains]
        self.allowed_dids = set(allowed_dids or ())
        self.max_age = max_age
        self.max_future = max_future
        self.nonce_capacity = nonce_capacity
        self.secret = secret
        # one failure limiter per gateway: the shared secret's when both schemes are on
        self.attempts = secret.attempts if secret is not None else FailedAttempts(max_attempts)
        # did + nonce -> expiry; shared across a fleet through the host's store
        self.replay: ReplayCache = replay or MemoryReplayCache(nonce_capacity)

    @property
    def max_attempts(self) -> int:
        return self.attempts.max_attempts

    def check_request(
        self, host: str, path: str, headers: Headers, peer: str, wall: float
    ) -> Verdict:
        """``peer``: the client's address (the gateway core resolves trusted proxies)."""
        self.replay.forget_expired(wall)
        try:
            proof = self._parse(headers)
            if self.allowed_dids and proof.did not in self.allowed_dids:
                raise DidError(f"{proof.did} is not in allowed_dids")
            age = wall - proof.timestamp
            if age > self.max_age or -age > self.max_future:
                raise DidError(
                    f"timestamp of {proof.did} is {-age:+.0f}s from ours "
                    f"(allowed -{self.max_age:.0f}s..+{self.max_future:.0f}s)"
                )
            if proof.expires is not None and proof.expires < wall:
                raise DidError(f"the signature of {proof.did} has expired")
            key = f"{proof.did} {proof.nonce}"
            if self.replay.seen(key, wall):
                raise DidError(f"replayed nonce from {proof.did}")
            # Verified first, whatever the address did. But when any DID may knock, an address
            # over the failure limit gets no documents fetched on its behalf (pinned and cached
            # ones still admit); with allowed_dids the fetches are few and cached anyway.
            may_fetch = bool(self.allowed_dids) or not self.attempts.over_limit(peer, wall)
            document = self.cache.lookup(proof.did, wall, may_fetch=may_fetch)
            if document is None:
                return Verdict(
                    False, 503, reason=f"fetching the DID document of {proof.did}", wait=True
                )
            method = authentication_method(document, proof.method_id)
            if method is None:
                raise DidError(f"{proof.method_id} is not an authentication method of {proof.did}")
            if not self._signature_ok(proof, public_key(method), host, path, headers):
                raise DidError(f"bad signature from {proof.did} (or signed for another host)")
        except DidError as exc:
            return self._fail(peer, wall, f"DID-WBA: {exc}")
        except Exception as exc:  # a crypto library's surprise on hostile input stays a refusal
            return self._fail(peer, wall, f"DID-WBA: verification error {type(exc).__name__}")
        extra: Headers = []
        if self.secret is not None:  # after the wait for a document: it spends its own nonce
            verdict = self.secret.check_request(host, path, headers, peer, wall)
            if not verdict.ok:
                return verdict
            extra = verdict.headers
        fresh = self.replay.remember(key, proof.timestamp + self.max_age + 1, wall)
        if fresh is None:
            return Verdict(
                False, 429, headers=[("retry-after", "5")], reason="DID nonce cache full"
            )
        if fresh is False:  # spent meanwhile (another worker, while we fetched the document)
            return self._fail(peer, wall, f"DID-WBA: replayed nonce from {proof.did}")
        return Verdict(True, identity=proof.did, headers=extra)

    def _parse(self, headers: Headers) -> Proof:
        signature_input = _get(headers, H_SIGNATURE_INPUT)
        if signature_input is not None:
            signature = _get(headers, H_SIGNATURE)
            if signature is None:
                raise DidError("Signature-Input without Signature")
            return parse_signature_input(signature_input, signature)
        authorization = _get(headers, H_AUTHORIZATION)
        if authorization is None:
            raise DidError("no DIDWba Authorization header")
        return parse_authorization(authorization)

    def _signature_ok(self, proof: Proof, key: Any, host: str, path: str, headers: Headers) -> bool:
        if proof.form != "http-signature":
            return any(
                _verify(key, proof.signature, legacy_message(proof, domain))
                for domain in self.service_domains
            )
        # RFC 9421: the signed authority must be ours, and cover it (directly or in the URI)
        if "@authority" not in proof.components and "@target-uri" not in proof.components:
            raise DidError("the HTTP signature covers neither @authority nor @target-uri")
        authority = host.strip().lower()
        from .routing import normalize_host

        if normalize_host(authority) not in self.service_domains:
            raise DidError(f"the upgrade names host {_short(host)}, not this gateway")
        # The receiver signed the URL it dialled; its scheme is not on the wire.
        for scheme in ("wss", "https", "ws", "http"):
            uri = f"{scheme}://{authority}{path}"
            base = signature_base(proof, "GET", uri, authority, headers)
            if _verify(key, proof.signature, base):
                return True
            if "@target-uri" not in proof.components:
                break  # the scheme is not signed: one try is enough
        return False

    def _fail(self, peer: str, wall: float, reason: str) -> Verdict:
        return refusal(self.attempts, peer, wall, reason, DID_REFUSAL_CODE)


# --- the receiver's side ---------------------------------------------------------------------


class DidWbaClient:
    """Signs the upgrade with the receiver's DID key (legacy form by default).

    ``form`` is ``"legacy"`` (no ``v``, signs ``service``: what the reference anp-proxy gateway
    and agent-connect verify) or ``"1.1"`` (``v="1.1"``, signs ``aud``: anp 1.x verifiers).
    With ``secret`` the HMAC headers go too, and the gateway must prove it knows the secret.
    """

    def __init__(
        self,
        document: dict[str, Any],
        private_key: Any,
        *,
        form: str = "legacy",
        secret: SharedSecretClient | None = None,
        service: str | None = None,
        nonce_source: Callable[[int], bytes],
    ) -> None:
        if form not in HEADER_FORMS:
            raise ValueError(f"DID-WBA header form must be one of {', '.join(HEADER_FORMS)}")
        did = document.get("id")
        if not isinstance(did, str):
            raise DidError("the DID document has no id")
        did_document_url(did)
        self.did = did
        self.method_id, method = first_authentication_method(document)
        self._check_pair(public_key(method), private_key)
        self.document = document
        self._key = private_key
        self.form = form
        self.secret = secret
        self.service = service  # the name to sign; None: the host dialled (as anp does)
        self._nonce_source = nonce_source

    @staticmethod
    def _check_pair(public: Any, private: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        try:
            same = private.public_key().public_bytes(*raw) == public.public_bytes(*raw)
        except AttributeError:
            same = False
        if not same:
            raise DidError("the private key does not match the DID document's authentication key")

    def request_headers(self, host: str, path: str, wall: float) -> Headers:
        from .routing import normalize_host

        domain = self.service or normalize_host(host)
        nonce = self._nonce_source(16).hex()
        timestamp = format_timestamp(wall)
        fragment = self.method_id.rpartition("#")[2]
        proof = Proof(
            self.did, self.method_id, nonce, wall, b"", self.form, timestamp_text=timestamp
        )
        signature = sign(self._key, legacy_message(proof, domain))
        version = 'v="1.1", ' if self.form == "1.1" else ""
        value = (
            f'{SCHEME} {version}did="{self.did}", nonce="{nonce}", timestamp="{timestamp}", '
            f'verification_method="{fragment}", '
            f'signature="{base64.urlsafe_b64encode(signature).rstrip(b"=").decode()}"'
        )
        headers: Headers = [("Authorization", value)]
        if self.secret is not None:
            headers += self.secret.request_headers(host, path, wall)
        return headers

    def check_response(self, headers: Headers) -> str | None:
        return None if self.secret is None else self.secret.check_response(headers)
