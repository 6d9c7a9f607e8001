"""A gateway on every core, as a user runs it: ``--workers 2`` and a receiver given one URL,
real processes on 127.0.0.1, both drivers (issue 19's multi-worker "done when")."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from anpx_host.workeradmin import combine_health, combine_metrics, combine_stats

from .processes import ROOT, Proc, free_port

DRIVERS = ["anpx_trio", "anpx_asyncio"]
pytestmark = pytest.mark.skipif(
    not hasattr(__import__("socket"), "SO_REUSEPORT"), reason="workers need SO_REUSEPORT"
)

SLOW_APP = """
import anyio
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        print("slow request in the app", flush=True)
        await anyio.sleep(1.0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})
"""


@contextlib.contextmanager
def fleet(driver: str, tmp_path: Path, workers: int = 2):
    """A gateway of ``workers`` processes and a receiver given worker 0's URL only."""
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    # A restart delay that leaves the test time to see the surviving worker serve alone.
    (tmp_path / "gw.toml").write_text("[gateway]\nworker_restart_delay = 3.0\n")
    http, admin = free_port(), free_port()
    gateway = Proc(
        ["python", "-m", driver, "gateway", "-c", str(tmp_path / "gw.toml"), "--workers",
         str(workers), "--gateway-port", str(http), "--wss-port", "0", "--admin-port", str(admin)],
    )  # fmt: skip
    receiver = None
    try:
        line = gateway.wait_for("their tunnel ports:", timeout=30)
        ports = [int(p) for p in line.rpartition(":")[2].split(",")]
        assert len(ports) == workers
        # a quick first retry: the restarted worker is back sooner than the default 1 s backoff
        (tmp_path / "rc.toml").write_text("[receiver]\nreconnect_delay = 0.2\n")
        receiver = Proc(
            ["python", "-m", driver, "receiver", "-c", "rc.toml", "--gateway-url",
             f"ws://127.0.0.1:{ports[0]}/", "--local-app", "slowapp:app"],
            cwd=tmp_path,
        )  # fmt: skip
        yield gateway, receiver, f"http://127.0.0.1:{http}", f"http://127.0.0.1:{admin}"
    finally:
        if receiver is not None:
            receiver.kill()
        gateway.kill()  # its workers notice and drain (the supervisor's life pipe)


def until(check, timeout: float = 30.0, what: str = "condition"):
    """Poll ``check`` until it returns a true value (a bound, not a synchronisation sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        time.sleep(0.05)


def all_ready(admin: str, workers: int = 2):
    health = httpx.get(f"{admin}/health", timeout=5).json()
    ok = health["ready"] and len([w for w in health["workers"] if w.get("ready")]) == workers
    return health if ok else None


def served_by(gateway: Proc, marker: str) -> set[str]:
    """Which workers' access logs show a request whose path contains ``marker``."""
    return {
        m.group(1)
        for m in re.finditer(rf"\[worker (\d+)\] \S+ \S+ GET /{marker}\S* 200", gateway.output)
    }


@pytest.mark.parametrize("driver", DRIVERS)
def test_one_url_reaches_every_worker_and_a_killed_worker_is_replaced(driver, tmp_path):
    with fleet(driver, tmp_path) as (gateway, receiver, public, admin):
        health = until(lambda: all_ready(admin), what="a receiver on both workers")
        assert health["receivers"] == 1 and health["status"] == "ok"
        # new connections land on whichever worker the kernel picks: each has the receiver
        for i in range(40):
            r = httpx.get(f"{public}/first{i}", timeout=10)
            assert r.status_code == 200 and r.text == f"/first{i}"
        until(lambda: served_by(gateway, "first39"), 10, "the access log")
        assert served_by(gateway, "first") == {"0", "1"}
        stats = httpx.get(f"{admin}/stats", timeout=5).json()
        assert stats["requests"] >= 40 and sorted(r["worker"] for r in stats["receivers"]) == [0, 1]
        metrics = httpx.get(f"{admin}/metrics", timeout=5).text
        assert (
            'anpx_receivers{worker="0"} 1' in metrics and 'anpx_receivers{worker="1"} 1' in metrics
        )
        assert "anpx_workers_up 2" in metrics

        victim = next(w for w in health["workers"] if w["worker"] == 1)["pid"]
        os.kill(victim, signal.SIGKILL)
        gateway.wait_for("gateway worker 1", timeout=10)  # the supervisor noticed
        for i in range(10):  # the other worker serves everything meanwhile
            r = httpx.get(f"{public}/second{i}", timeout=10)
            assert r.status_code == 200
        health = until(lambda: all_ready(admin), what="worker 1 restarted, receiver back")
        assert next(w for w in health["workers"] if w["worker"] == 1)["pid"] != victim
        for i in range(40):
            assert httpx.get(f"{public}/third{i}", timeout=10).status_code == 200
        until(lambda: served_by(gateway, "third39"), 10, "the access log")
        assert served_by(gateway, "third") == {"0", "1"}
        assert "Traceback" not in gateway.output + receiver.output


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_restarted_worker_takes_connections_only_once_its_receiver_is_back(driver, tmp_path):
    with fleet(driver, tmp_path) as (gateway, receiver, public, admin):
        health = until(lambda: all_ready(admin), what="a receiver on both workers")
        victim = next(w for w in health["workers"] if w["worker"] == 1)["pid"]
        os.kill(victim, signal.SIGKILL)
        gateway.wait_for("restarting gateway worker 1", timeout=15)
        # new connections, one request each, from before the new worker listens until it has
        # served some: the kernel gives it its share only once it holds its public port, after
        # the receiver (backing off since the kill) is on its tunnel again
        statuses: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while "1" not in served_by(gateway, "back"):
            assert time.monotonic() < deadline, "worker 1 never served"
            r = httpx.get(f"{public}/back{len(statuses)}", timeout=10)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert set(statuses) == {200}, statuses
        gateway.wait_for("[worker 1] public port held until a receiver is connected")
        gateway.wait_for("[worker 1] a receiver is connected: taking public connections")
        assert "[worker 0] public port held" not in gateway.output  # not at the first start
        assert "Traceback" not in gateway.output + receiver.output


@pytest.mark.parametrize("driver", DRIVERS)
def test_sigterm_drains_every_worker(driver, tmp_path):
    with fleet(driver, tmp_path) as (gateway, receiver, public, admin):
        health = until(lambda: all_ready(admin), what="a receiver on both workers")
        pids = [w["pid"] for w in health["workers"]]
        result: dict = {}

        def slow() -> None:
            result["r"] = httpx.get(f"{public}/slow", timeout=20)

        client = threading.Thread(target=slow)
        client.start()
        receiver.wait_for("slow request in the app")
        assert gateway.stop(signal.SIGTERM, timeout=20) == 0
        client.join(20)
        assert result["r"].status_code == 200 and result["r"].text == "/slow"
        for pid in pids:  # every worker is gone with the supervisor
            assert not _alive(pid)
        assert gateway.output.count("draining") >= 2
        assert "Traceback" not in gateway.output


@pytest.mark.parametrize("driver", DRIVERS)
def test_workers_never_outlive_a_killed_supervisor(driver, tmp_path):
    with fleet(driver, tmp_path) as (gateway, _receiver, _public, admin):
        health = until(lambda: all_ready(admin), what="a receiver on both workers")
        gateway.kill()  # SIGKILL: nothing forwarded
        for w in health["workers"]:
            until(lambda pid=w["pid"]: not _alive(pid), 20, f"worker {w['worker']} gone")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for an init that does not reap is not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def test_a_worker_that_cannot_start_fails_the_start(tmp_path):
    with contextlib.closing(__import__("socket").socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = Proc(
            ["python", "-m", "anpx_asyncio", "gateway", "--workers", "2", "--gateway-port",
             str(port), "--wss-port", "0", "--admin-port", "0"],
        )  # fmt: skip
        try:
            assert proc.finish(30) == 1
        finally:
            proc.kill()
    assert "exited with status 1 while starting" in proc.output
    assert "Traceback" not in proc.output


def test_both_mode_refuses_workers():
    proc = Proc(["python", "-m", "anpx_trio", "both", "--workers", "2"], ROOT)
    assert proc.finish(30) == 2
    assert "[gateway] workers: more than one worker needs mode gateway" in proc.output


@pytest.mark.parametrize("driver", ["trio", "asyncio"])
def test_a_held_public_port_opens_with_the_first_receiver_or_after_the_wait(driver, caplog):
    """The worker's hold (Listen.hold_for_receiver), on an embedded gateway."""
    import anpx_asyncio.gateway
    import anpx_trio.gateway
    from anpx_core.gateway import GatewaySettings
    from anpx_core.receiver import ReceiverSettings

    from .apps import app as hello_app
    from .deploy import Runner, start_receiver

    mod = anpx_trio.gateway if driver == "trio" else anpx_asyncio.gateway

    def gateway(wait: float) -> tuple[Runner, str]:
        port = free_port()
        server = mod.GatewayServer(
            GatewaySettings(),
            http=mod.Listen("127.0.0.1", port, hold_for_receiver=wait),
            tunnel=mod.Listen("127.0.0.1", 0),
        )
        return Runner(driver, server), f"http://127.0.0.1:{port}/"

    caplog.set_level("INFO", logger="anpx.gateway")
    runner, url = gateway(1000.0)  # only a receiver can open it
    try:
        with pytest.raises(httpx.ConnectError):  # tunnel open, public port not listening yet
            httpx.get(url, timeout=5)
        rc = ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{runner.obj.ports.tunnel}/"])
        receiver = start_receiver(driver, rc, hello_app)
        try:
            until(lambda: httpx.get(f"{url}echo").status_code == 200, 10, "the port opened")
        finally:
            receiver.stop()
        assert "a receiver is connected: taking public connections" in caplog.text
    finally:
        runner.stop()
    runner, url = gateway(0.2)  # no receiver: the port opens anyway, with its 503
    try:
        until(lambda: httpx.get(url, timeout=5).status_code == 503, 10, "the port opened")
        assert "no receiver after 0.2s: taking public connections anyway" in caplog.text
    finally:
        runner.stop()


def test_a_malformed_worker_role_is_refused():
    from anpx_host.errors import StartupError
    from anpx_host.workers import WORKER_ENV, worker_role

    assert worker_role({}) is None
    good = {
        "index": 1,
        "http_port": 8080,
        "tunnel_ports": [8765, 8766],
        "ready_fd": 5,
        "life_fd": 6,
    }
    assert worker_role({WORKER_ENV: json.dumps(good)}).tunnel_ports == (8765, 8766)
    assert worker_role({WORKER_ENV: json.dumps(good)}).receiver_wait == 0.0  # a first start
    for wait in (0, 3600):  # [gateway] worker_receiver_wait's range, at its edges
        role = worker_role({WORKER_ENV: json.dumps({**good, "receiver_wait": wait})})
        assert role is not None and role.receiver_wait == wait
    bad_roles = [
        "{",
        "[]",
        json.dumps({**good, "index": 2}),
        json.dumps({**good, "ready_fd": "x"}),
        *(json.dumps({**good, "receiver_wait": w}) for w in (-1, 3600.5, "nan", "inf", "x")),
    ]
    for bad in bad_roles:
        with pytest.raises(StartupError, match=WORKER_ENV):
            worker_role({WORKER_ENV: bad})


# --- the admin's combining, without processes ----------------------------------------------


def test_health_is_ready_while_every_answering_worker_is():
    up = {"status": "ok", "live": True, "ready": True, "receivers": 2}
    bare = {"status": "no_receivers", "live": True, "ready": False, "receivers": 0}
    assert combine_health([(0, up), (1, up)])[0] == 200
    status, body = combine_health([(0, up), (1, None)])  # a dead worker gets no connections
    assert status == 200 and body["workers"][1] == {"worker": 1, "status": "down"}
    status, body = combine_health([(0, up), (1, bare)])
    assert (status, body["status"], body["receivers"]) == (503, "no_receivers", 0)
    assert combine_health([(0, None), (1, None)])[1]["status"] == "no_workers"
    assert combine_health([(0, up)], draining=True)[1]["status"] == "draining"


def test_stats_sum_counters_and_keep_each_worker():
    a = {"receivers": [{"id": "r"}], "routes": {"/": 1}, "requests": 3, "responses_by_status":
         {"200": 3}, "latency_ms": {"p50": 1.0, "p99": None}, "draining": False}  # fmt: skip
    b = {"receivers": [{"id": "r"}], "routes": {"/": 1}, "requests": 4, "responses_by_status":
         {"200": 2, "502": 2}, "latency_ms": {"p50": 3.0, "p99": 9.0}}  # fmt: skip
    total = combine_stats([(0, a), (1, b), (2, None)])
    assert total["requests"] == 7 and total["routes"] == {"/": 2}
    assert total["responses_by_status"] == {"200": 5, "502": 2}
    assert total["latency_ms"] == {"p50": 3.0, "p99": 9.0}
    assert [r["worker"] for r in total["receivers"]] == [0, 1]
    assert [w["status"] for w in total["workers"]] == ["up", "up", "down"]


def test_stats_sum_tcp_counters_per_service():
    a = {"tcp": {"db": {"open": 1, "opened": 5, "bytes_in": 10, "connect_failures": 0}}}
    b = {"tcp": {"db": {"open": 2, "opened": 1, "bytes_in": 7, "connect_failures": 1},
                 "ssh": {"open": 0, "opened": 3, "bytes_in": True}}}  # fmt: skip
    total = combine_stats([(0, a), (1, b), (2, None)])
    assert total["tcp"] == {
        "db": {"open": 3, "opened": 6, "bytes_in": 17, "connect_failures": 1},
        "ssh": {"open": 0, "opened": 3},  # a non-number (here a JSON true) is left out
    }


def test_metrics_get_a_worker_label_and_one_help_per_family():
    text = (
        "# HELP anpx_receivers Receivers.\n# TYPE anpx_receivers gauge\nanpx_receivers 1\n"
        "# HELP anpx_requests_total Requests.\n# TYPE anpx_requests_total counter\n"
        'anpx_requests_total{route="/",status="200"} 5\n'
    )
    out = combine_metrics([(0, text), (1, text), (2, None)])
    assert out.count("# HELP anpx_receivers ") == 1 and out.count("# TYPE anpx_requests_total") == 1
    assert 'anpx_receivers{worker="0"} 1' in out and 'anpx_receivers{worker="1"} 1' in out
    assert 'anpx_requests_total{worker="1",route="/",status="200"} 5' in out
    assert "anpx_workers 3" in out and "anpx_workers_up 2" in out
    lines = out.splitlines()  # a family's samples follow its TYPE line
    assert lines.index('anpx_receivers{worker="1"} 1') < lines.index(
        "# HELP anpx_requests_total Requests."
    )
