"""Real servers through the tunnel, by both ways in (a public [[gateway.tcp]] port and the
visitor command), on all four gateway x receiver driver pairings: PostgreSQL with psql and a
Python driver (pg8000), redis-server with redis-cli, sshd with ssh's ProxyCommand running
``python -m anpx_<driver> connect ssh --stdio``. Servers run in temporary directories on free
loopback ports; a missing binary skips with the reason."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from anpx_core.auth import NoAuth
from anpx_core.gateway import GatewaySettings
from anpx_core.gateway.tcp import TcpListen
from anpx_core.receiver import ReceiverSettings
from anpx_core.visitor import VisitorSettings

from .deploy import PAIRINGS, start_gateway, start_receiver, start_visitor, wait_until
from .real_servers import need, ssh_argv, start_postgres, start_redis, start_sshd

pytestmark = pytest.mark.slow

SERVICES = ("pg", "redis", "ssh")


def _start(what, tmp_path_factory):
    try:
        return what(tmp_path_factory.mktemp(what.__name__))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"{what.__name__} could not start here: {exc}")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    server = _start(start_postgres, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = _start(start_redis, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = _start(start_sshd, tmp_path_factory)
    yield server
    server.stop()


class World:
    """A gateway with a public port per service, a receiver offering them, a visitor each."""

    def __init__(self, gw: str, rc: str, targets: dict[str, int]) -> None:
        gs = GatewaySettings()
        gs.tcp.listeners = [TcpListen(0, name, "127.0.0.1") for name in targets]
        gs.tcp.visitor_auth = NoAuth()
        self.gw_driver = gw
        self.gateway = start_gateway(gw, gs)
        self.url = f"ws://127.0.0.1:{self.gateway.obj.ports.tunnel}/"
        self.public = dict(zip(targets, self.gateway.obj.tcp_ports, strict=True))
        rs = ReceiverSettings(client_id="rc-1", gateway_urls=[self.url], reconnect_delay=0.05)
        rs.tcp_services = {name: ("127.0.0.1", port) for name, port in targets.items()}
        self.receiver = start_receiver(rc, rs)
        wait_until(lambda: any(r["services"] for r in self.gateway.obj.core.receivers))
        self.visitors = {}
        self.visit = {}
        for name in targets:
            v = start_visitor(rc, VisitorSettings(gateway_url=self.url, service=name))
            self.visitors[name] = v
            self.visit[name] = v.obj.port

    def close(self) -> None:
        for v in self.visitors.values():
            v.stop()
        self.receiver.stop()
        self.gateway.stop()


@pytest.fixture(scope="module", params=PAIRINGS, ids=lambda p: f"{p[0]}-gw-{p[1]}-rc")
def world(request, postgres, redis, sshd):
    w = World(*request.param, {"pg": postgres.port, "redis": redis.port, "ssh": sshd.port})
    yield w
    w.close()


WAYS = ["public", "visitor"]


def _port(world: World, service: str, way: str) -> int:
    return world.public[service] if way == "public" else world.visit[service]


@pytest.mark.parametrize("way", WAYS)
def test_psql(world, way):
    psql = need("psql")
    port = _port(world, "pg", way)
    result = subprocess.run(
        [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "anpx", "-d", "postgres", "-At",
         "-c", "select 40 + 2", "-c", "select string_agg(md5(i::text), '') from generate_series(1, 5000) i"],
        capture_output=True, timeout=60, env={**os.environ, "PGCONNECT_TIMEOUT": "20"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().split("\n")
    assert lines[0] == "42"
    assert len(lines[1]) == 32 * 5000  # ~160 kB back through the stream


@pytest.mark.parametrize("way", WAYS)
def test_pg8000(world, way):
    pg8000 = pytest.importorskip("pg8000.native", reason="pg8000 (the test extra) is not installed")
    conn = pg8000.Connection("anpx", host="127.0.0.1", port=_port(world, "pg", way),
                             database="postgres", timeout=30)  # fmt: skip
    try:
        conn.run("create temporary table t (k int, v text)")
        rows = [(i, "x" * i) for i in range(200)]
        for k, v in rows:
            conn.run("insert into t values (:k, :v)", k=k, v=v)
        assert conn.run("select k, v from t order by k") == [list(r) for r in rows]
    finally:
        conn.close()


@pytest.mark.parametrize("way", WAYS)
def test_redis_cli(world, way):
    cli = need("redis-cli")
    port = str(_port(world, "redis", way))
    value = "v" * 100_000
    set_ = subprocess.run([cli, "-h", "127.0.0.1", "-p", port, "-x", "set", f"k-{way}"],
                          input=value.encode(), capture_output=True, timeout=60)  # fmt: skip
    assert set_.stdout.strip() == b"OK", set_.stderr
    got = subprocess.run([cli, "-h", "127.0.0.1", "-p", port, "strlen", f"k-{way}"],
                         capture_output=True, timeout=60)  # fmt: skip
    assert got.stdout.strip() == b"100000"
    ping = subprocess.run([cli, "-h", "127.0.0.1", "-p", port, "ping"], capture_output=True,
                          timeout=60)  # fmt: skip
    assert ping.stdout.strip() == b"PONG"


def test_ssh_proxycommand_stdio(world, sshd):
    need("ssh")
    proxy = (f"{sys.executable} -m anpx_{world.gw_driver} connect ssh --stdio "
             f"--gateway-url {world.url}")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    # ssh's own port argument is ignored when a ProxyCommand carries the connection
    argv = ssh_argv(sshd, 22, proxy, "echo through-the-tunnel; head -c 200000 /dev/zero | wc -c")
    result = subprocess.run(argv, capture_output=True, timeout=90, env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["through-the-tunnel", "200000"]


def test_ssh_public_port(world, sshd):
    need("ssh")
    argv = ssh_argv(sshd, world.public["ssh"], None, "echo via-public-port")
    result = subprocess.run(argv, capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.strip() == b"via-public-port"
