"""The receiver's reconnect policy, sans IO: exponential backoff, jitter, cap, giving up."""

from __future__ import annotations

import pytest

from anpx_core.receiver import MAX_RECONNECT_DELAY, ReceiverCore, ReceiverSettings


def failing_core(rng: float, **settings) -> tuple[ReceiverCore, list[float]]:
    """Fail every connection attempt at once; return the delays the core chose."""
    core = ReceiverCore(
        ReceiverSettings(gateway_urls=["ws://gw.example:8765/"], **settings), rng=lambda: rng
    )
    now, delays = 0.0, []
    core.start(now)
    for _ in range(12):
        requests = core.pop_connects()
        if not requests:
            break
        core.connect_failed(requests[0].cid, now, "connection refused")
        link = core._links[0]
        if link.retry_at is None:
            break
        delays.append(link.retry_at - now)
        now = link.retry_at
        core.tick(now)
    return core, delays


@pytest.mark.parametrize(("rng", "factor"), [(0.0, 0.5), (0.5, 1.0), (0.999, 1.499)])
def test_backoff_doubles_with_jitter_and_is_capped(rng, factor):
    _core, delays = failing_core(rng, reconnect_delay=1.0)
    expected = [min(2.0**i, MAX_RECONNECT_DELAY) * factor for i in range(len(delays))]
    assert delays == pytest.approx(expected, rel=1e-3)
    assert max(delays) <= MAX_RECONNECT_DELAY * 1.5
    assert len(delays) == 12  # forever by default: it kept trying


def test_gives_up_after_max_reconnect_attempts():
    core, delays = failing_core(0.5, reconnect_delay=0.1, max_reconnect_attempts=3)
    assert len(delays) == 3  # the first attempt, then three more, then no more
    assert core.given_up and "connection refused" in core.last_error
    assert core.pop_connects() == []


def test_reconnect_disabled_gives_up_after_the_first_failure():
    core, delays = failing_core(0.5, reconnect_enabled=False)
    assert delays == [] and core.given_up


def test_a_successful_handshake_resets_the_backoff():
    core = ReceiverCore(ReceiverSettings(gateway_urls=["ws://gw.example:8765/"]), rng=lambda: 0.5)
    core.start(0.0)
    for now in (0.0, 1.0):  # two failures: the next delay would be 4 s
        [request] = core.pop_connects()
        core.connect_failed(request.cid, now, "refused")
        core.tick(core._links[0].retry_at)
    [request] = core.pop_connects()
    core.connected(request.cid, 3.0)
    link = core._links[0]
    link.state = "open"  # as after a 101; then the tunnel drops
    core.closed(request.cid, 10.0)
    assert link.retry_at == pytest.approx(10.0 + 1.0)  # back to reconnect_delay


# --- a gateway that accepts the upgrade, then refuses the DID (4003) -----------------------


def _did_refusing_pair(max_attempts: int = 100):
    """A receiver signing as alice and, in memory, a gateway core that only allows bob."""
    pytest.importorskip("cryptography")
    import os

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from anpx_core.didwba import DidWbaClient, DidWbaServer, DocumentCache
    from anpx_core.gateway import GatewayCore, GatewaySettings
    from anpx_host.didfiles import make_document

    alice, alice_pem = make_document("did:wba:agents.example.com:alice")
    bob = make_document("did:wba:agents.example.com:bob")[0]
    cache = DocumentCache({alice["id"]: alice, bob["id"]: bob}, fetch=False)
    server = DidWbaServer(
        cache, ["gw.example"], allowed_dids=[bob["id"]], max_attempts=max_attempts
    )
    gateway = GatewayCore(GatewaySettings(auth=server))
    signer = DidWbaClient(alice, load_pem_private_key(alice_pem, None), nonce_source=os.urandom)
    receiver = ReceiverCore(
        ReceiverSettings(gateway_urls=["ws://gw.example:8765/"], auth=signer, reconnect_delay=1.0),
        rng=lambda: 0.5,  # no jitter: delays are reconnect_delay * 2**n
    )
    return gateway, receiver


def _attempt(gateway, receiver, now: float) -> None:
    """One connection, carried byte for byte between the two cores until both close it."""
    [request] = receiver.pop_connects()
    receiver.connected(request.cid, now)
    gcid = gateway.open_tunnel(now, ("192.0.2.1", 40000))
    for _ in range(20):
        up, _ = receiver.take_output(request.cid)
        receiver.written(request.cid, now)
        if up:
            gateway.receive(gcid, up, now)
        down, gateway_done = gateway.take_output(gcid)
        gateway.written(gcid, now)
        if down:
            receiver.receive(request.cid, down, now)
        if not up and not down and gateway_done:
            break
    gateway.closed(gcid, now)
    receiver.closed(request.cid, now)


def test_a_did_refusal_is_a_failed_attempt_backed_off_and_logged_once(caplog):
    import logging

    caplog.set_level(logging.INFO, "anpx")
    gateway, receiver = _did_refusing_pair()
    now, delays = 1000.0, []
    receiver.start(now, 1_800_000_000.0)
    gateway.set_wall_clock(now, 1_800_000_000.0)
    for _ in range(5):
        _attempt(gateway, receiver, now)
        retry_at = receiver._links[0].retry_at
        delays.append(retry_at - now)
        now = retry_at
        receiver.tick(now)
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0])  # not once a second
    assert gateway.stats.auth_failures == 5 and gateway.receivers == []
    refusals = [r for r in caplog.records if "refused our DID" in r.getMessage()]
    warnings = [r for r in refusals if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "4003 DID authentication failed" in warnings[0].getMessage()
    assert "allowed_dids" in warnings[0].getMessage()
    assert "refused our DID" in receiver.last_error
    assert receiver.connected_links == 0


def test_a_did_refusal_counts_towards_max_reconnect_attempts():
    gateway, receiver = _did_refusing_pair()
    receiver.settings.max_reconnect_attempts = 2
    now = 0.0
    receiver.start(now, 1_800_000_000.0)
    gateway.set_wall_clock(now, 1_800_000_000.0)
    for _ in range(3):
        _attempt(gateway, receiver, now)
        if receiver._links[0].retry_at is None:
            break
        now = receiver._links[0].retry_at
        receiver.tick(now)
    assert receiver.given_up and receiver.pop_connects() == []
