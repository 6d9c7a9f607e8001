"""[gateway] shared_store: replay caches and rate limits shared by a fleet, against a real
redis-server started on a free loopback port in a temporary directory."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from anpx_core.auth import SharedSecretClient, SharedSecretServer
from anpx_core.ratelimit import RateLimiter
from anpx_host.config import ConfigError, load_config
from anpx_host.launch import make_plan

from .processes import free_port

redis = pytest.importorskip("redis", reason="the redis package is not installed")
pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)

from anpx_host.shared import RedisRateLimit, RedisReplayCache, SharedStore  # noqa: E402

SECRET = b"s3cret-for-the-fleet"
NOW = 1_800_000_000.0


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path):
    srv = RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def handshake(wall: float = NOW) -> list[tuple[str, str]]:
    client = SharedSecretClient(SECRET, "rc", nonce_source=os.urandom)
    return client.request_headers("gw.example:8765", "/tunnel", wall)


def worker_auth(store: SharedStore | None) -> SharedSecretServer:
    auth = SharedSecretServer(SECRET)
    if store is not None:
        auth.replay = RedisReplayCache(store, "nonce:secret", auth.replay)
    return auth


def test_a_nonce_spent_at_one_worker_is_spent_at_every_worker(server):
    one, two = (worker_auth(SharedStore(server.url, 0.5)) for _ in range(2))
    headers = handshake()
    assert one.check_request("gw.example:8765", "/tunnel", headers, "a:1", NOW).ok
    replay = two.check_request("gw.example:8765", "/tunnel", headers, "b:1", NOW + 1)
    assert not replay.ok and "replayed" in replay.reason
    # and without the store, each process remembers only its own (documented)
    alone_one, alone_two = worker_auth(None), worker_auth(None)
    headers = handshake()
    assert alone_one.check_request("gw.example:8765", "/tunnel", headers, "a:1", NOW).ok
    assert alone_two.check_request("gw.example:8765", "/tunnel", headers, "b:1", NOW).ok


def test_nonces_expire_in_redis_with_their_proof(server):
    store = SharedStore(server.url, 0.5)
    cache = RedisReplayCache(store, "nonce:test", worker_auth(None).replay)
    assert cache.remember("n1" * 8, NOW + 0.2, NOW) is True
    ttl = store.client.pttl("anpx:nonce:test:" + "n1" * 8)
    assert 0 < ttl <= 200


def test_the_rate_limit_is_one_bucket_for_the_fleet(server):
    limits = [RedisRateLimit(SharedStore(server.url, 0.5), RateLimiter(1.0, 3)) for _ in range(3)]
    answers = [limits[i % 3]("203.0.113.7", 0.0) for i in range(4)]
    assert answers[:3] == [None, None, None]  # the burst, spent across three workers
    assert answers[3] is not None and 0 < answers[3] <= 1.0  # then one per second
    assert limits[0]("203.0.113.8", 0.0) is None  # another address has its own bucket
    # an IPv6 client is one bucket per /64, as in one process
    assert [limits[0](f"2001:db8::{i}", 0.0) for i in range(4)][3] is not None


def test_an_outage_falls_back_to_per_process_state_and_recovers(server, caplog):
    caplog.set_level(logging.WARNING, "anpx")
    clock = [0.0]
    store = SharedStore(server.url, 0.3, clock=lambda: clock[0])
    auth = worker_auth(store)
    limit = RedisRateLimit(store, RateLimiter(1.0, 2))
    server.stop()
    started = time.monotonic()
    headers = handshake()
    assert auth.check_request("gw.example:8765", "/tunnel", headers, "a:1", NOW).ok  # not refused
    replay = auth.check_request("gw.example:8765", "/tunnel", headers, "a:1", NOW)
    assert not replay.ok  # the process's own cache still catches a replay to it
    assert [limit("192.0.2.1", 0.0) for _ in range(3)][2] is not None  # local buckets
    assert store.down and time.monotonic() - started < 5  # one timeout, not one per call
    outages = [r for r in caplog.records if "shared store" in r.getMessage()]
    assert len(outages) == 1 and "failed" in outages[0].getMessage()
    server.start()
    clock[0] += 10  # past OUTAGE_RETRY: asked again
    assert auth.check_request("gw.example:8765", "/tunnel", handshake(), "a:1", NOW).ok
    assert not store.down
    assert "answers again" in caplog.records[-1].getMessage()


def test_config_wires_the_store_into_auth_and_rate_limit(server, tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(
        "[gateway]\n"
        f'shared_store = "{server.url}"\n'
        "rate_limit = 5\n"
        "[gateway.auth]\nenabled = true\n"
        f'shared_secret = "{SECRET.decode()}"\n'
    )
    plan = make_plan("gateway", load_config(str(path), {}))
    settings = plan.gateway.settings
    assert isinstance(settings.auth.replay, RedisReplayCache)
    assert isinstance(settings.rate_limit, RedisRateLimit) and settings.rate_limit.rate == 5


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "redis://127.0.0.1:notaport/0", "127.0.0.1:6379"]
)
def test_a_bad_store_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match="shared_store"):
        load_config(None, {"gateway.shared_store": url})
