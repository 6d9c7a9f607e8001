"""The failed-handshake limiter shared by the shared secret and DID-WBA (sans IO, fake time)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_core.attempts import WINDOW, FailedAttempts

ADDRESSES = ["10.0.0.1:1", "10.0.0.2", "[2001:db8::1]:5", "2001:db8:0:1::1", "-"]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(st.tuples(st.sampled_from(ADDRESSES), st.floats(0, 90)), max_size=60),
)
def test_matches_a_model_of_one_minute_windows(max_attempts, steps):
    limiter = FailedAttempts(max_attempts)
    windows: dict[str, tuple[float, int]] = {}  # the model: address key -> (start, failures)
    wall = 1_800_000_000.0
    for peer, advance in steps:
        wall += advance
        key = limiter.key(peer)
        start, count = windows.get(key, (wall, 0))
        if wall - start >= WINDOW:
            start, count = wall, 0
        windows[key] = (start, count + 1)
        over = limiter.over_limit(peer, wall)
        assert over == (count >= max_attempts)
        retry = limiter.record(peer, wall)
        if count + 1 <= max_attempts:
            assert retry is None
        else:
            assert retry is not None and 1 <= retry <= WINDOW
            assert retry >= start + WINDOW - wall  # never tells a client to come back too early
    assert limiter.tracked <= len({limiter.key(p) for p in ADDRESSES})


def test_memory_is_bounded_at_max_tracked():
    limiter = FailedAttempts(1, max_tracked=3)
    for i in range(10):
        limiter.record(f"192.0.2.{i}", 0.0)
    assert limiter.tracked == 3
    # the least recently failing were forgotten: 192.0.2.0 starts afresh, 192.0.2.9 does not
    assert limiter.record("192.0.2.0", 1.0) is None
    assert limiter.record("192.0.2.9", 1.0) == 59


def test_max_attempts_is_at_least_one():
    with pytest.raises(ValueError, match="max_attempts"):
        FailedAttempts(0)
