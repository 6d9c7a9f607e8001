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
