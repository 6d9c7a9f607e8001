"""DID-WBA, sans IO: the header forms, each refusal, the document cache, config and keygen."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_core.auth import SharedSecretClient, SharedSecretServer
from anpx_core.didwba import (
    DID_REFUSAL_CODE,
    DidError,
    DidWbaClient,
    DidWbaServer,
    DocumentCache,
    did_document_url,
    format_timestamp,
    parse_authorization,
    parse_document,
    parse_timestamp,
)
from anpx_host.config import ConfigError, load_config, parse_config
from anpx_host.didfiles import load_pinned, main, make_document, service_domains

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .hypothesis_profiles import examples

DID = "did:wba:agents.example.com:alice"
OTHER = "did:wba:agents.example.com:bob"
HOST = "gw.example.com:8765"
NOW = 1_800_000_000.0


def identity(did: str = DID, key: str = "secp256k1"):
    document, pem = make_document(did, key)
    return document, load_pem_private_key(pem, None)


ALICE = identity()
BOB = identity(OTHER, "ed25519")


def client(who=ALICE, form: str = "legacy", secret=None) -> DidWbaClient:
    return DidWbaClient(*who, form=form, secret=secret, nonce_source=os.urandom)


def server(*documents: dict, **kwargs) -> DidWbaServer:
    pinned = {d["id"]: d for d in documents} or {ALICE[0]["id"]: ALICE[0]}
    return DidWbaServer(DocumentCache(pinned, fetch=False), ["gw.example.com"], **kwargs)


def check(srv: DidWbaServer, headers, wall: float = NOW, host: str = HOST, peer="10.0.0.1:5"):
    return srv.check_request(host, "/", headers, peer, wall)


# --- accepted forms ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["legacy", "1.1"])
@pytest.mark.parametrize("who", [ALICE, BOB], ids=["secp256k1", "ed25519"])
def test_a_verified_did_is_the_identity(form, who):
    verdict = check(server(who[0]), client(who, form).request_headers(HOST, "/", NOW))
    assert verdict.ok and verdict.identity == who[0]["id"] and verdict.headers == []


def test_the_header_looks_like_the_reference():
    (name, value), *_ = client().request_headers(HOST, "/", NOW)
    assert name == "Authorization"
    assert value.startswith(f'DIDWba did="{DID}", nonce="')
    assert 'timestamp="2027-01-15T08:00:00Z", verification_method="key-1", signature="' in value
    assert 'v="1.1", ' in client(form="1.1").request_headers(HOST, "/", NOW)[0][1]


def test_timestamp_window_edges():
    srv = server(max_age=300, max_future=60)
    assert check(srv, client().request_headers(HOST, "/", NOW - 300)).ok
    assert check(srv, client().request_headers(HOST, "/", NOW + 60)).ok
    stale = check(srv, client().request_headers(HOST, "/", NOW - 301))
    ahead = check(srv, client().request_headers(HOST, "/", NOW + 61))
    assert not stale.ok and "timestamp" in stale.reason
    assert not ahead.ok and "timestamp" in ahead.reason


# --- refusals: each one names its cause in the log, none tells the peer ---------------------


def _tampered(headers):
    (key, auth), *_rest = headers
    head, _, sig = auth.rpartition('signature="')
    raw = bytearray(base64.urlsafe_b64decode(sig[:-1] + "=="))
    raw[5] ^= 1
    return [(key, f'{head}signature="{base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}"')]


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: _tampered(client().request_headers(HOST, "/", NOW)), "bad signature"),
        (lambda: client().request_headers("other.example.com", "/", NOW), "bad signature"),
        (
            lambda: client(form="1.1").request_headers("other.example.com", "/", NOW),
            "bad signature",
        ),
        (lambda: client().request_headers(HOST, "/", NOW - 3600), "timestamp"),
        (lambda: client(BOB).request_headers(HOST, "/", NOW), "not among the pinned"),
        (
            lambda: [
                (k, v.replace("DIDWba ", 'DIDWba v="1.1", '))
                for k, v in client().request_headers(HOST, "/", NOW)
            ],
            "bad signature",
        ),
        (lambda: [("Authorization", "Bearer abc")], "scheme"),
        (lambda: [], "no DIDWba Authorization header"),
    ],
    ids=["tampered", "service", "aud", "stale", "unknown-did", "form-swap", "bearer", "none"],
)
def test_refusals(make, why):
    verdict = check(server(), make())
    assert not verdict.ok and verdict.status == DID_REFUSAL_CODE
    assert why in verdict.reason and "\n" not in verdict.reason
    assert verdict.headers == []


def test_a_replayed_nonce_is_refused():
    srv = server()
    headers = client().request_headers(HOST, "/", NOW)
    assert check(srv, headers).ok
    verdict = check(srv, headers, NOW + 1)
    assert not verdict.ok and "replayed nonce" in verdict.reason


def test_nonces_are_forgotten_after_the_window_only():
    srv = server(max_age=300, max_attempts=100)
    headers = client().request_headers(HOST, "/", NOW)
    assert check(srv, headers).ok
    assert "replayed" in check(srv, headers, NOW + 300).reason
    assert "timestamp" in check(srv, headers, NOW + 302).reason  # stale before forgotten


def test_a_key_outside_authentication_is_refused():
    document, key = identity()
    # the key stays in verificationMethod (e.g. for key agreement) but may not authenticate
    document["authentication"] = []
    srv = server(document)
    signer = client((dict(document, authentication=[f"{DID}#key-1"]), key))
    verdict = check(srv, signer.request_headers(HOST, "/", NOW))
    assert not verdict.ok and "is not an authentication method" in verdict.reason


def test_allowed_dids():
    srv = server(ALICE[0], BOB[0], allowed_dids=[OTHER])
    assert check(srv, client(BOB).request_headers(HOST, "/", NOW)).ok
    verdict = check(srv, client().request_headers(HOST, "/", NOW))
    assert not verdict.ok and "allowed_dids" in verdict.reason


def test_failed_attempts_follow_the_shared_secret_rules():
    srv = server(max_attempts=2)
    stale = [check(srv, client().request_headers(HOST, "/", NOW - 3600)) for _ in range(3)]
    assert [v.status for v in stale] == [DID_REFUSAL_CODE, DID_REFUSAL_CODE, 429]
    assert ("retry-after", "60") in stale[2].headers
    # verified first: a correctly signed receiver is admitted from the failing address
    assert check(srv, client().request_headers(HOST, "/", NOW)).ok
    # only failures count; another address has its own count; IPv6 by /64, ports ignored
    assert check(srv, [], peer="10.0.0.2:5").status == DID_REFUSAL_CODE
    v6 = [
        check(srv, [], peer=p).status for p in ("[2001:db8::1]:1", "2001:db8::2", "[2001:db8::3]:9")
    ]
    assert v6 == [DID_REFUSAL_CODE, DID_REFUSAL_CODE, 429]
    # the window is a minute (fake time): at 59.999 s still over, at 60 s counting again
    late = check(srv, [], NOW + 59.999)
    assert late.status == 429 and ("retry-after", "1") in late.headers
    assert check(srv, [], NOW + 60).status == DID_REFUSAL_CODE


def test_an_address_over_the_limit_gets_no_document_fetched():
    cache = DocumentCache(pinned={OTHER: BOB[0]})
    wanted: list[str] = []
    cache.on_wanted = wanted.append
    srv = DidWbaServer(cache, ["gw.example.com"], max_attempts=1)
    for _ in range(2):
        check(srv, client(BOB).request_headers(HOST, "/", NOW - 3600))
    # alice's document is not cached: not fetched for this address, a failure (429) instead
    blocked = check(srv, client().request_headers(HOST, "/", NOW))
    assert blocked.status == 429 and "too many failed handshakes" in blocked.reason
    assert wanted == []
    # a pinned (or cached) document needs no fetch: bob is admitted from the same address
    assert check(srv, client(BOB).request_headers(HOST, "/", NOW)).ok
    # from another address alice's document is fetched, and then she is admitted anywhere
    assert check(srv, client().request_headers(HOST, "/", NOW), peer="10.0.0.2:5").wait
    cache.store(DID, json.dumps(ALICE[0]).encode(), NOW)
    assert check(srv, client().request_headers(HOST, "/", NOW)).ok
    assert wanted == [DID]


def test_with_allowed_dids_a_blocked_address_still_gets_its_document_fetched():
    cache = DocumentCache()
    wanted: list[str] = []
    cache.on_wanted = wanted.append
    srv = DidWbaServer(cache, ["gw.example.com"], max_attempts=1, allowed_dids=[DID])
    assert [check(srv, []).status for _ in range(2)] == [DID_REFUSAL_CODE, 429]
    assert check(srv, client().request_headers(HOST, "/", NOW)).wait and wanted == [DID]
    cache.store(DID, json.dumps(ALICE[0]).encode(), NOW)
    assert check(srv, client().request_headers(HOST, "/", NOW)).ok


def test_with_the_shared_secret_there_is_one_failure_limiter():
    secret = b"correct horse battery staple"
    hmac_server = SharedSecretServer(secret, max_attempts=2)
    srv = server(secret=hmac_server, max_attempts=100)  # the secret's limiter is the one
    assert srv.attempts is hmac_server.attempts and srv.max_attempts == 2
    good_did_wrong_secret = client(
        secret=SharedSecretClient(b"wrong", "rc", nonce_source=os.urandom)
    )
    assert check(srv, good_did_wrong_secret.request_headers(HOST, "/", NOW)).status == 401
    bad_did = client(secret=SharedSecretClient(secret, "rc", nonce_source=os.urandom))
    assert check(srv, bad_did.request_headers(HOST, "/", NOW - 3600)).status == DID_REFUSAL_CODE
    assert check(srv, []).status == 429  # the third failure, whichever scheme refused
    both = client(secret=SharedSecretClient(secret, "rc", nonce_source=os.urandom))
    assert check(srv, both.request_headers(HOST, "/", NOW)).ok
    assert hmac_server.tracked_addresses == 1


def test_nonce_memory_is_bounded():
    srv = server(nonce_capacity=2)
    for _ in range(2):
        assert check(srv, client().request_headers(HOST, "/", NOW)).ok
    verdict = check(srv, client().request_headers(HOST, "/", NOW))
    assert not verdict.ok and verdict.status == 429


# --- with the shared secret ----------------------------------------------------------------


def test_with_the_shared_secret_both_are_needed_and_the_gateway_proves_itself():
    secret = b"correct horse battery staple"
    srv = server(secret=SharedSecretServer(secret))
    both = client(secret=SharedSecretClient(secret, "rc-1", nonce_source=os.urandom))
    verdict = check(srv, both.request_headers(HOST, "/", NOW))
    assert verdict.ok and verdict.identity == DID
    assert both.check_response(verdict.headers) is None
    did_only = check(srv, client().request_headers(HOST, "/", NOW))
    assert not did_only.ok and did_only.status == 401
    wrong = client(
        secret=SharedSecretClient(b"wrong", "rc-1", nonce_source=os.urandom)
    ).request_headers(HOST, "/", NOW)
    assert not check(srv, wrong).ok


# --- documents ------------------------------------------------------------------------------


def test_an_unknown_document_is_asked_for_once_and_the_handshake_waits():
    cache = DocumentCache()
    wanted: list[str] = []
    cache.on_wanted = wanted.append
    srv = DidWbaServer(cache, ["gw.example.com"])
    first = check(srv, client().request_headers(HOST, "/", NOW))
    second = check(srv, client().request_headers(HOST, "/", NOW))
    assert first.wait and second.wait and wanted == [DID]
    cache.store(DID, json.dumps(ALICE[0]).encode(), NOW)
    assert check(srv, client().request_headers(HOST, "/", NOW)).ok
    # the TTL: fetched again once it is over
    assert check(srv, client().request_headers(HOST, "/", NOW + 299), NOW + 299).ok
    assert check(srv, client().request_headers(HOST, "/", NOW + 301), NOW + 301).wait


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"id": OTHER}).encode(), "names another DID"),
        (b" " * 70_000, "over"),
    ],
)
def test_malformed_documents_are_refused_for_a_while(body, why):
    cache = DocumentCache(failure_ttl=30)
    cache.on_wanted = lambda did: None
    srv = DidWbaServer(cache, ["gw.example.com"], max_attempts=100)
    assert check(srv, client().request_headers(HOST, "/", NOW)).wait
    cache.store(DID, body, NOW)
    verdict = check(srv, client().request_headers(HOST, "/", NOW))
    assert not verdict.ok and why in verdict.reason
    assert check(srv, client().request_headers(HOST, "/", NOW + 31), NOW + 31).wait


def test_pending_fetches_are_bounded():
    cache = DocumentCache(max_pending=1)
    cache.on_wanted = lambda did: None
    srv = DidWbaServer(cache, ["gw.example.com"], max_attempts=100)
    assert check(srv, client().request_headers(HOST, "/", NOW)).wait
    verdict = check(srv, client(BOB).request_headers(HOST, "/", NOW))
    assert not verdict.ok and "being fetched already" in verdict.reason


@pytest.mark.parametrize(
    ("did", "url"),
    [
        ("did:wba:example.com", "https://example.com/.well-known/did.json"),
        ("did:wba:example.com:user:alice", "https://example.com/user/alice/did.json"),
        ("did:wba:localhost%3A8443:a", "https://localhost:8443/a/did.json"),
    ],
)
def test_document_urls(did, url):
    assert did_document_url(did) == url


@pytest.mark.parametrize(
    "did",
    [
        "did:web:example.com",
        "did:wba:",
        "did:wba:exa mple.com",
        "did:wba:example.com:..",
        "did:wba:example.com%2Fx",
        "did:wba:h%3A99999",
        "did:wba:h:" + "a" * 600,
    ],
)
def test_bad_dids(did):
    with pytest.raises(DidError):
        did_document_url(did)


# --- parsers never fail otherwise than with DidError ---------------------------------------


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=300))
def test_authorization_parser_only_raises_did_error(value):
    with contextlib.suppress(DidError):
        parse_authorization("DIDWba " + value)


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(max_size=200))
def test_document_parser_only_raises_did_error(body):
    with contextlib.suppress(DidError):
        parse_document(DID, body)


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(min_value=0, max_value=253402300799))
def test_timestamps_round_trip(seconds):
    assert parse_timestamp(format_timestamp(seconds)) == seconds


def test_timestamp_forms():
    assert parse_timestamp("2027-01-15T08:00:00Z") == NOW
    assert parse_timestamp("2027-01-15T09:00:00+01:00") == NOW
    assert parse_timestamp("2027-01-15T08:00:00.500Z") == NOW + 0.5
    for bad in (
        "2027-01-15T08:00:00",
        "2027-02-30T00:00:00Z",
        "1800000000",
        "\uff12\uff10\uff12\uff17-01-15T08:00:00Z",
    ):
        with pytest.raises(DidError):
            parse_timestamp(bad)


# --- the receiver's files, config and keygen -----------------------------------------------


def test_a_key_that_does_not_match_the_document_is_refused_at_start():
    with pytest.raises(DidError, match="does not match"):
        DidWbaClient(ALICE[0], BOB[1], nonce_source=os.urandom)


def test_keygen_writes_a_private_key_only_the_owner_can_read(tmp_path, capsys):
    assert main(["keygen", "did:wba:localhost%3A8443:agents:carol", "--out", str(tmp_path)]) == 0
    key = tmp_path / "key-1_private.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "https://localhost:8443/agents/carol/did.json" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # never overwrites a key
        main(["keygen", "did:wba:localhost%3A8443:agents:carol", "--out", str(tmp_path)])
    pinned = load_pinned(str(tmp_path))
    assert list(pinned) == ["did:wba:localhost%3A8443:agents:carol"]


def test_config_builds_both_sides(tmp_path):
    doc_path = tmp_path / "did.json"
    key_path = tmp_path / "key.pem"
    document, pem = make_document(DID)
    doc_path.write_text(json.dumps(document))
    key_path.write_bytes(pem)
    pins = tmp_path / "pins"
    pins.mkdir()
    (pins / "alice.json").write_text(json.dumps(document))
    from anpx_host.launch import make_plan

    receiver = {
        "auth": {
            "did_wba_enabled": True,
            "did": DID,
            "did_document_path": str(doc_path),
            "private_key_path": str(key_path),
        }
    }
    cfg = parse_config(
        {
            "mode": "both",
            "gateway": {"auth": {"did_wba_enabled": True, "did_documents_dir": str(pins)}},
            "receiver": receiver,
        }
    )
    plan = make_plan("both", cfg)
    gateway_auth, receiver_auth = plan.gateway.settings.auth, plan.receiver.settings.auth
    assert isinstance(gateway_auth, DidWbaServer) and gateway_auth.secret is None
    assert isinstance(receiver_auth, DidWbaClient) and receiver_auth.did == DID
    headers = receiver_auth.request_headers("127.0.0.1:8765", "/", NOW)
    assert gateway_auth.check_request("127.0.0.1:8765", "/", headers, "p:1", NOW).ok
    assert service_domains(cfg.gateway) == ["127.0.0.1", "::1", "localhost"]
    # `both` on a public name: the built-in receiver dials loopback but signs the public name
    public = parse_config(
        {
            "mode": "both",
            "gateway": {
                "wss_host": "0.0.0.0",
                "insecure": True,
                "auth": {
                    "did_wba_enabled": True,
                    "did_documents_dir": str(pins),
                    "did_service_domains": ["gw.example.com"],
                },
            },
            "receiver": receiver,
        }
    )
    plan = make_plan("both", public)
    headers = plan.receiver.settings.auth.request_headers("127.0.0.1:8765", "/", NOW)
    assert plan.gateway.settings.auth.check_request("gw.example.com", "/", headers, "p:1", NOW).ok
    wrong = parse_config(
        {
            "mode": "receiver",
            "receiver": {
                "auth": {
                    "did_wba_enabled": True,
                    "did": OTHER,
                    "did_document_path": str(doc_path),
                    "private_key_path": str(key_path),
                }
            },
        }
    )
    with pytest.raises(ConfigError, match="is not the id of"):
        make_plan("receiver", wrong)


def test_both_mode_with_gateway_did_needs_a_receiver_did(tmp_path):
    gateway = {"auth": {"did_wba_enabled": True}}
    for receiver in ({}, {"auth": {"enabled": True, "shared_secret": "s3cret"}}):
        with pytest.raises(
            ConfigError, match=r"\[receiver\.auth\] did_wba_enabled: must be true"
        ) as exc:
            parse_config({"mode": "both", "gateway": gateway, "receiver": receiver})
        assert exc.value.path == "receiver.auth.did_wba_enabled"
    # the same receiver section is fine for a gateway alone, or a receiver alone
    assert parse_config({"mode": "gateway", "gateway": gateway}).gateway.auth.did_wba_enabled
    # a receiver DID the gateway would refuse is named too
    receiver = {
        "auth": {
            "did_wba_enabled": True,
            "did": DID,
            "did_document_path": "d.json",
            "private_key_path": "k.pem",
        }
    }
    only_bob = {"auth": {"did_wba_enabled": True, "allowed_dids": [OTHER]}}
    with pytest.raises(ConfigError, match=r"\[receiver\.auth\] did: is not in"):
        parse_config({"mode": "both", "gateway": only_bob, "receiver": receiver})
    with_alice = {"auth": {"did_wba_enabled": True, "allowed_dids": [OTHER, DID]}}
    assert parse_config({"mode": "both", "gateway": with_alice, "receiver": receiver})


# --- which hosts documents are fetched from ------------------------------------------------


def _asked(cache: DocumentCache, did: str) -> str:
    """ "asked" when the cache asks the driver for ``did``'s document, else why not."""
    cache.on_wanted = lambda did: None
    try:
        cache.lookup(did, NOW)
    except DidError as exc:
        return str(exc)
    return "asked"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.1.2.3", "2130706433", "127.1", "0x7f.1", "169.254.169.254", "8.8.8.8"],
)
def test_by_default_ip_literal_hosts_are_not_fetched(host):
    why = _asked(DocumentCache(), f"did:wba:{host}:agents:x")
    assert "is an IP address" in why and "did_fetch_hosts" in why


@pytest.mark.parametrize("host", ["agents.example.com", "localhost", "a1.example", "x.y.z"])
def test_by_default_host_names_are_fetched_from_public_addresses_only(host):
    cache = DocumentCache()
    assert _asked(cache, f"did:wba:{host}%3A8443:agents:x") == "asked" and cache.public_only


@pytest.mark.parametrize(
    ("patterns", "host", "allowed"),
    [
        (["*.example.org"], "a.example.org", True),
        (["*.example.org"], "a.b.example.org", True),
        (["*.example.org"], "example.org", False),  # the suffix only, not the domain itself
        (["*.example.org"], "badexample.org", False),
        (["*.example.org"], "a.example.org.evil.com", False),
        (["example.org"], "EXAMPLE.org", True),  # host names are not case-sensitive
        (["example.org"], "www.example.org", False),
        (["127.0.0.1"], "127.0.0.1", True),  # listed: fetched, wherever it is
        (["*"], "10.0.0.1", True),
        ([], "example.org", False),  # an empty list fetches nothing
    ],
)
def test_did_fetch_hosts_patterns(patterns, host, allowed):
    cache = DocumentCache(fetch_hosts=patterns)
    why = _asked(cache, f"did:wba:{host}%3A8443:agents:x")
    assert (why == "asked") is allowed, why
    assert not cache.public_only
    if not allowed:
        assert "is not in did_fetch_hosts" in why


def test_pinned_documents_need_no_fetch_host():
    cache = DocumentCache({DID: ALICE[0]}, fetch_hosts=[])
    assert cache.lookup(DID, NOW) == ALICE[0]


def test_fetch_hosts_from_the_config():
    from anpx_host.didfiles import fetch_hosts, gateway_auth

    def auth(**keys):
        return parse_config({"gateway": {"auth": {"did_wba_enabled": True, **keys}}}).gateway

    assert fetch_hosts(auth().auth) is None  # public host names
    assert gateway_auth(auth(), None).cache.public_only
    dids = ["did:wba:A.example.com:x", "did:wba:b.example.com%3A8443:y", "did:wba:a.example.com"]
    assert fetch_hosts(auth(allowed_dids=dids).auth) == ["a.example.com", "b.example.com"]
    listed = auth(allowed_dids=dids, did_fetch_hosts=["*.Example.NET", "*"])
    assert gateway_auth(listed, None).cache.fetch_hosts == ("*.example.net", "*")
    for bad in (["a.example:443"], ["*example.org"], ["**.x"], ["http://x"], "x", [""], ["a..*"]):
        with pytest.raises(ConfigError, match="did_fetch_hosts"):
            auth(did_fetch_hosts=bad)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # shared address space (CGNAT)
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped: judged as IPv4
        ("::ffff:93.184.216.34", True),
        ("64:ff9b::10.0.0.1", False),  # NAT64 of a private address
        ("64:ff9b::93.184.216.34", True),
    ],
)
def test_which_addresses_are_public(address, public):
    from anpx_host.didfetch import is_public

    assert is_public(address) is public


def test_seed_config_keys_load(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        "[gateway.auth]\ndid_wba_enabled = true\nnonce_window_seconds = 120\n"
        'allowed_dids = ["did:wba:example.com:one"]\nresolver_base_url = "https://x"\n'
    )
    cfg = load_config(path)
    assert cfg.gateway.auth.did_wba_enabled and cfg.gateway.auth.nonce_window_seconds == 120
    assert cfg.ignored == ("[gateway.auth] resolver_base_url",)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


SIGNED = client().request_headers(HOST, "/", NOW)  # each example has a server of its own


@settings(max_examples=examples(75), deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["authentication", "verificationMethod", "x"]), json_values, max_size=3
    ),
    st.dictionaries(
        st.sampled_from(["type", "publicKeyJwk", "publicKeyMultibase", "publicKeyBase58"]),
        json_values,
        max_size=4,
    ),
)
def test_hostile_documents_are_refused_not_raised(document, method):
    """A document a DID's host serves is hostile input: any shape refuses, none raises."""
    document = {**document, "id": DID}
    if method:
        document["verificationMethod"] = [{**method, "id": f"{DID}#key-1"}]
        document["authentication"] = [f"{DID}#key-1"]
    srv = server(document, max_attempts=10**6)
    verdict = check(srv, SIGNED)
    assert not verdict.ok


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["authorization", "signature-input", "signature", "host"]),
            st.text(max_size=120),
        ),
        max_size=4,
    )
)
def test_garbage_headers_are_refused_not_raised(headers):
    verdict = check(server(max_attempts=10**6), headers)
    assert not verdict.ok and not verdict.wait


def test_the_core_loads_cryptography_only_when_a_key_is_used_and_it_brings_no_io():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import anpx_core, anpx_core.gateway, anpx_core.didwba, anpx_host.launch\n"
        "assert not [m for m in sys.modules if m.startswith('cryptography')], 'eager import'\n"
        "before = set(sys.modules)\n"
        "from anpx_host.didfiles import make_document\n"
        "from anpx_core.didwba import DidWbaServer, DocumentCache\n"
        "doc, _ = make_document('did:wba:example.com:a')\n"
        "srv = DidWbaServer(DocumentCache({doc['id']: doc}, fetch=False), ['example.com'])\n"
        "srv.check_request('example.com', '/', [], 'p:1', 0.0)\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new & {'socket', 'ssl', 'select', 'selectors', 'threading', 'asyncio',"
        " 'trio', 'anyio'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_hostile_signature_input_is_parsed_in_linear_time():
    from anpx_core.didwba import parse_signature_input

    for value in ['sig1=("@authority")' + " " * 8000 + "x", "sig1=(" + '"a" ' * 2000]:
        with pytest.raises(DidError):
            parse_signature_input(value, "sig1=:AAAA:")


def test_document_cache_ttl_edge():
    parse_config({"gateway": {"auth": {"did_cache_ttl": 1}}})
    with pytest.raises(ConfigError, match="did_cache_ttl"):
        parse_config({"gateway": {"auth": {"did_cache_ttl": 0.5}}})


def _asking_cache(**kwargs) -> DocumentCache:
    cache = DocumentCache(**kwargs)
    cache.on_wanted = lambda did: None
    return cache


def test_failure_ttl_edge():
    cache = _asking_cache(failure_ttl=10)
    srv = DidWbaServer(cache, ["gw.example.com"], max_attempts=100)
    assert check(srv, client().request_headers(HOST, "/", NOW)).wait
    cache.failed(DID, "https://agents.example.com/alice/did.json answered HTTP 500", NOW)
    assert (
        "HTTP 500" in check(srv, client().request_headers(HOST, "/", NOW + 9.9), NOW + 9.9).reason
    )
    assert check(srv, client().request_headers(HOST, "/", NOW + 10), NOW + 10).wait


def test_document_size_edge():
    body = json.dumps(ALICE[0]).encode()
    exact = _asking_cache(max_document_bytes=len(body))
    exact.store(DID, body, NOW)
    assert exact.lookup(DID, NOW) == ALICE[0]
    over = _asking_cache(max_document_bytes=len(body) - 1)
    over.store(DID, body, NOW)
    with pytest.raises(DidError, match="is over"):
        over.lookup(DID, NOW)


def test_cache_capacity_edge():
    cache = _asking_cache(capacity=2)
    for who in (ALICE, BOB):
        cache.store(who[0]["id"], json.dumps(who[0]).encode(), NOW)
    assert cache.lookup(DID, NOW) and cache.lookup(OTHER, NOW)
    carol = make_document("did:wba:agents.example.com:carol")[0]
    cache.store(carol["id"], json.dumps(carol).encode(), NOW)
    assert cache.lookup(DID, NOW) is None  # the oldest went: fetched again
    assert cache.lookup(OTHER, NOW) and cache.lookup(carol["id"], NOW)


def test_limits_come_from_the_config(tmp_path):
    from anpx_host.didfiles import gateway_auth

    cfg = parse_config(
        {
            "gateway": {
                "auth": {
                    "did_wba_enabled": True,
                    "did_failure_ttl": 7,
                    "did_max_pending": 3,
                    "did_max_document_bytes": 4096,
                    "did_cache_capacity": 5,
                    "did_nonce_capacity": 6,
                    "did_cache_ttl": 8,
                }
            }
        }
    )
    srv = gateway_auth(cfg.gateway, None)
    cache = srv.cache
    assert (cache.failure_ttl, cache.max_pending, cache.max_document_bytes) == (7, 3, 4096)
    assert (cache.capacity, cache.ttl, srv.nonce_capacity) == (5, 8, 6)
    with pytest.raises(ConfigError, match="did_max_document_bytes"):
        parse_config({"gateway": {"auth": {"did_max_document_bytes": 255}}})


def _upgrade_bytes(headers) -> bytes:
    lines = [
        "GET / HTTP/1.1",
        f"Host: {HOST}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{n}: {v}" for n, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _parked_gateway():
    from anpx_core.gateway import GatewayCore, GatewaySettings

    cache = DocumentCache()
    wanted: list[str] = []
    cache.on_wanted = wanted.append
    core = GatewayCore(GatewaySettings(auth=DidWbaServer(cache, ["gw.example.com"])))
    core.set_wall_clock(0.0, NOW)
    cid = core.open_tunnel(0.0, ("192.0.2.1", 50000))
    core.receive(cid, _upgrade_bytes(client().request_headers(HOST, "/", NOW)), 0.0)
    return core, cache, cid, wanted


def test_the_gateway_answers_a_parked_handshake_once_the_document_arrives():
    core, cache, cid, wanted = _parked_gateway()
    assert wanted == [DID] and core.take_output(cid)[0] == b""  # nothing said yet
    cache.store(DID, json.dumps(ALICE[0]).encode(), NOW)
    core.resume_handshakes(0.1)
    assert core.take_output(cid)[0].startswith(b"HTTP/1.1 101")
    assert [r["id"] for r in core.receivers] == [DID]


def test_a_parked_handshake_whose_peer_left_is_forgotten():
    core, cache, cid, _ = _parked_gateway()
    core.closed(cid, 0.05)
    cache.store(DID, json.dumps(ALICE[0]).encode(), NOW)
    core.resume_handshakes(0.1)
    assert core.receivers == [] and core.stats.tunnels_opened == 0
