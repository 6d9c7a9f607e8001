"""DID-WBA files: the receiver's document and key, the gateway's pinned documents, keygen.

Start-up reads these once (like the shared-secret file); the handshakes themselves run in
:mod:`anpx_core.didwba`, which does no I/O. Also a small command that makes a DID's key and
document::

    python -m anpx_host.didfiles keygen did:wba:example.com:agents:alice --out ./alice

writes ``./alice/did.json`` (publish it at the URL printed, or pin it on the gateway) and
``./alice/key-1_private.pem`` (keep it on the receiver, mode 600).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from pathlib import Path
from typing import Any

from anpx_core.auth import SharedSecretClient, SharedSecretServer
from anpx_core.didwba import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    DidError,
    DidWbaClient,
    DidWbaServer,
    DocumentCache,
    did_document_url,
    did_host,
    parse_document,
)

from .config import AuthConfig, ConfigError, GatewayConfig

EXTRA_HINT = "DID-WBA needs the cryptography package: pip install 'anpx[did]'"
KEY_TYPES = ("secp256k1", "ed25519")
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ConfigError(EXTRA_HINT) from None


def service_domains(g: GatewayConfig) -> list[str]:
    """The host names receivers must sign as service/aud: the configured ones, else wss_host."""
    if g.auth.did_service_domains:
        return list(g.auth.did_service_domains)
    host = g.wss_host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.startswith("127."):
        return sorted({host, *_LOOPBACK_NAMES} - {"[::1]"})
    return [host]


def fetch_hosts(a: AuthConfig) -> list[str] | None:
    """The hosts DID documents may be fetched from: ``did_fetch_hosts``, else the hosts of
    ``allowed_dids``, else None (any public host name; see DocumentCache)."""
    if a.did_fetch_hosts:
        return list(a.did_fetch_hosts)
    if a.allowed_dids:
        return sorted({did_host(did) for did in a.allowed_dids})
    return None


def load_pinned(
    directory: str, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` DID document in ``directory``, by its ``id``."""
    pinned: dict[str, dict[str, Any]] = {}
    try:
        paths = sorted(Path(directory).glob("*.json"))
    except OSError as exc:
        raise ConfigError(
            f"[gateway.auth] did_documents_dir: cannot read {directory}: {exc}"
        ) from None
    if not Path(directory).is_dir():
        raise ConfigError(f"[gateway.auth] did_documents_dir: {directory} is not a directory")
    for path in paths:
        try:
            body = path.read_bytes()
            did = json.loads(body).get("id") if body.strip().startswith(b"{") else None
            if not isinstance(did, str):
                raise DidError("no id")
            did_document_url(did)
            pinned[did] = parse_document(did, body, max_bytes)
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"[gateway.auth] did_documents_dir: {path} is not a DID document: {exc}"
            ) from None
    return pinned


def gateway_auth(g: GatewayConfig, secret: SharedSecretServer | None) -> DidWbaServer:
    require_cryptography()
    a = g.auth
    pinned = (
        load_pinned(a.did_documents_dir, a.did_max_document_bytes) if a.did_documents_dir else {}
    )
    cache = DocumentCache(
        pinned,
        fetch=a.did_fetch,
        ttl=a.did_cache_ttl,
        failure_ttl=a.did_failure_ttl,
        capacity=a.did_cache_capacity,
        max_pending=a.did_max_pending,
        max_document_bytes=a.did_max_document_bytes,
        fetch_hosts=fetch_hosts(a),
    )
    cache.fetch_timeout = a.did_fetch_timeout
    cache.ca_file = a.did_ca_file
    return DidWbaServer(
        cache,
        service_domains(g),
        allowed_dids=list(a.allowed_dids),
        max_age=float(a.nonce_window_seconds),
        max_future=a.did_max_future,
        max_attempts=a.max_attempts,
        nonce_capacity=a.did_nonce_capacity,
        secret=secret,
    )


def receiver_auth(
    a: AuthConfig, secret: SharedSecretClient | None, service: str | None = None
) -> DidWbaClient:
    require_cryptography()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    assert a.did_document_path and a.private_key_path  # config checked this
    try:
        document = json.loads(Path(a.did_document_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"[receiver.auth] did_document_path: cannot read {a.did_document_path}: {exc}"
        ) from None
    try:
        key = load_pem_private_key(Path(a.private_key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"[receiver.auth] private_key_path: cannot load {a.private_key_path}: {exc}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError("[receiver.auth] did_document_path: not a JSON object")
    if a.did is not None and document.get("id") != a.did:
        raise ConfigError(f"[receiver.auth] did: {a.did} is not the id of {a.did_document_path}")
    try:
        return DidWbaClient(
            document,
            key,
            form=a.did_header,
            secret=secret,
            service=service,
            nonce_source=os.urandom,
        )
    except DidError as exc:
        raise ConfigError(f"[receiver.auth] DID-WBA: {exc}") from None


# --- keygen --------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_document(did: str, key_type: str = "secp256k1") -> tuple[dict[str, Any], bytes]:
    """A new key and the DID document that lists it under ``authentication`` (PEM, document)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    did_document_url(did)
    method_id = f"{did}#key-1"
    if key_type == "ed25519":
        key: Any = ed25519.Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        method = {
            "id": method_id,
            "type": "Ed25519VerificationKey2018",
            "controller": did,
            "publicKeyJwk": {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)},
        }
    elif key_type == "secp256k1":
        key = ec.generate_private_key(ec.SECP256K1())
        numbers = key.public_key().public_numbers()
        method = {
            "id": method_id,
            "type": "EcdsaSecp256k1VerificationKey2019",
            "controller": did,
            "publicKeyJwk": {
                "kty": "EC",
                "crv": "secp256k1",
                "x": _b64url(numbers.x.to_bytes(32, "big")),
                "y": _b64url(numbers.y.to_bytes(32, "big")),
            },
        }
    else:
        raise ValueError(f"key type must be one of {', '.join(KEY_TYPES)}")
    document = {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/suites/jws-2020/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1",
        ],
        "id": did,
        "verificationMethod": [method],
        "authentication": [method_id],
    }
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return document, pem


def keygen(did: str, out: str, key_type: str = "secp256k1") -> tuple[Path, Path]:
    document, pem = make_document(did, key_type)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    doc_path = folder / "did.json"
    key_path = folder / "key-1_private.pem"
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists; not overwriting a private key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    doc_path.write_text(json.dumps(document, indent=2) + "\n")
    return doc_path, key_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anpx_host.didfiles", description="DID-WBA files for anpx receivers"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("keygen", help="make a key pair and its DID document")
    gen.add_argument("did", help="did:wba:host[:path...], e.g. did:wba:example.com:agents:alice")
    gen.add_argument("--out", default=".", help="folder for did.json and key-1_private.pem")
    gen.add_argument("--key", choices=KEY_TYPES, default="secp256k1")
    args = parser.parse_args(argv)
    try:
        require_cryptography()
        doc_path, key_path = keygen(args.did, args.out, args.key)
    except (ConfigError, DidError, OSError) as exc:
        parser.exit(1, f"error: {exc}\n")
    print(f"wrote {doc_path} and {key_path} (keep the key secret)")
    print(f"publish {doc_path} at {did_document_url(args.did)}")
    print("or pin it on the gateway: copy it into [gateway.auth] did_documents_dir")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
