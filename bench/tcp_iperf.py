#!/usr/bin/env python3
"""TCP services through the tunnel vs direct, in the same run (docs/performance.md, issue 16).

    python bench/tcp_iperf.py [--drivers trio,asyncio] [--seconds 5] [--out bench/results/tcp.json]
                              [--window BYTES] [--tcp-window BYTES]
    python bench/tcp_iperf.py --setup-only ROUNDS [--setups N]   # connection setup only

For each driver (gateway and receiver processes on the same driver, on 127.0.0.1):

* throughput with ``iperf3`` (1 stream and 8 streams, client -> server), against the
  ``[[gateway.tcp]]`` public port and against iperf3 directly;
* connection setup: time from ``connect()`` to the first byte of a service that writes one
  byte on accept, through a warm tunnel vs direct (N sequential connections, p50/p90);
* memory: gateway + receiver RSS idle, and with 100 concurrent TCP streams open (each has
  carried 64 KiB each way).

Processes are started with the real command line (``python -m anpx_<driver> gateway -c ...``)
and stopped at the end. Needs iperf3 (Debian ``iperf3``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Services:
    """In-process helper services: a one-byte banner and an echo (threads)."""

    def __init__(self) -> None:
        self.banner = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.echo = socket.create_server(("127.0.0.1", 0), backlog=512)
        for sock, handler in ((self.banner, self._banner), (self.echo, self._echo)):
            threading.Thread(target=self._serve, args=(sock, handler), daemon=True).start()

    @staticmethod
    def _serve(sock: socket.socket, handler) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    @staticmethod
    def _banner(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b"!")
            conn.recv(1)

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def port(self, which: str) -> int:
        return (self.banner if which == "banner" else self.echo).getsockname()[1]


def iperf(port: int, streams: int, seconds: float) -> float:
    """Gbit/s received by the server (retried while the server still ends the last test)."""
    for _ in range(20):
        try:
            return _iperf(port, streams, seconds)
        except RuntimeError as exc:
            if "busy" not in str(exc) and "reset by peer" not in str(exc):  # still ending the last
                raise
            time.sleep(0.5)
    return _iperf(port, streams, seconds)


def _iperf(port: int, streams: int, seconds: float) -> float:
    out = subprocess.run(
        ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-P", str(streams),
         "-J", "--connect-timeout", "10000"],
        capture_output=True, timeout=seconds + 60,
    )  # fmt: skip
    data = json.loads(out.stdout or b"{}")
    if "error" in data or "end" not in data:
        raise RuntimeError(f"iperf3: {data.get('error') or out.stderr.decode()[-300:]}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def setup_latency(port: int, n: int) -> list[float]:
    """Milliseconds from connect() to the first byte, for ``n`` fresh connections."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sock.recv(1) != b"!":
                raise RuntimeError("no banner")
            times.append((time.perf_counter() - start) * 1000)
    return times


def hold_streams(port: int, n: int, size: int = 64 * 1024) -> list[socket.socket]:
    """``n`` connections through the echo service, each having carried ``size`` each way."""
    socks = []
    block = os.urandom(size)
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(block)
        got = 0
        while got < size:
            got += len(sock.recv(size))
        socks.append(sock)
    return socks


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Pair:
    """A gateway and a receiver process of one driver, from config files."""

    def __init__(
        self, driver: str, tmp: Path, targets: dict[str, int], window: int = 0, tcp_window: int = 0
    ) -> None:
        self.http, self.tunnel = free_port(), free_port()
        self.public = {name: free_port() for name in targets}
        gw = tmp / f"gw-{driver}.toml"
        gw.write_text(
            f"[gateway]\nport = {self.http}\nwss_port = {self.tunnel}\nadmin_port = 0\n"
            "max_streams_per_receiver = 1000\n"
            + (f"stream_window = {window}\n" if window else "")
            + (f"tcp_stream_window = {tcp_window}\n" if tcp_window else "")
            + "[logging]\nlevel = \"WARNING\"\n"
            + "".join(f'[[gateway.tcp]]\nport = {p}\nservice = "{n}"\n' for n, p in self.public.items())
        )  # fmt: skip
        rc = tmp / f"rc-{driver}.toml"
        rc.write_text(
            f'[receiver]\ngateway_url = "ws://127.0.0.1:{self.tunnel}/"\nclient_id = "bench"\n'
            + (f"stream_window = {window}\n" if window else "")
            + (f"tcp_stream_window = {tcp_window}\n" if tcp_window else "")
            + '[logging]\nlevel = "WARNING"\n'
            + "".join(f'[[receiver.tcp]]\nname = "{n}"\nlocal = "127.0.0.1:{p}"\n' for n, p in targets.items())
        )  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        py = [sys.executable, "-m", f"anpx_{driver}"]
        self.gw = subprocess.Popen([*py, "gateway", "-c", str(gw)], env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL,
                                   stderr=open(tmp / f"gw-{driver}.log", "wb"))  # noqa: SIM115  # fmt: skip
        wait_port(self.tunnel)
        self.rc = subprocess.Popen([*py, "receiver", "-c", str(rc)], env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL,
                                   stderr=open(tmp / f"rc-{driver}.log", "wb"))  # noqa: SIM115  # fmt: skip
        # ready once a connection through the public port gets an answer
        deadline = time.monotonic() + 20
        banner = self.public.get("banner")
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", banner), timeout=2) as s:
                    if s.recv(1) == b"!":
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        logs = (tmp / f"rc-{driver}.log").read_text()[-500:]
        raise RuntimeError(f"the receiver's services did not come up: {logs}")

    def rss(self) -> int:
        return rss_kib(self.gw.pid) + rss_kib(self.rc.pid)

    def stop(self) -> None:
        for proc in (self.rc, self.gw):
            proc.send_signal(signal.SIGTERM)
        for proc in (self.rc, self.gw):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def setup_rounds(args: argparse.Namespace) -> int:
    """Connection setup only, interleaved: each round measures direct then every driver
    (both pairs stay up), so that load from other processes hits all of them alike."""
    services = Services()
    targets = {"banner": services.port("banner")}
    drivers = args.drivers.split(",")
    p50: dict[str, list[float]] = {"direct": [], **{d: [] for d in drivers}}
    cpu: dict[str, tuple[list[float], list[float]]] = {d: ([], []) for d in drivers}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {d: Pair(d, Path(tmp), targets, args.window, args.tcp_window) for d in drivers}
        try:
            time.sleep(1)
            for _ in range(args.setup_only):
                p50["direct"].append(
                    statistics.median(setup_latency(targets["banner"], args.setups))
                )
                for d, pair in pairs.items():
                    before = [cpu_seconds(pair.gw.pid), cpu_seconds(pair.rc.pid)]
                    p50[d].append(
                        statistics.median(setup_latency(pair.public["banner"], args.setups))
                    )
                    for side, pid in enumerate((pair.gw.pid, pair.rc.pid)):
                        cpu[d][side].append((cpu_seconds(pid) - before[side]) / args.setups)
        finally:
            for pair in pairs.values():
                pair.stop()
    direct = statistics.median(p50["direct"])
    for name, values in p50.items():
        med = statistics.median(values)
        extra = "" if name == "direct" else f" (+{med - direct:.3f})"
        print(f"{name}: setup p50 {med:.3f} ms{extra}; per round "
              + " ".join(f"{v:.2f}" for v in values))  # fmt: skip
    for name, (gw, rc) in cpu.items():
        print(f"{name}: CPU per connection (median of rounds), gateway "
              f"{statistics.median(gw) * 1e6:.0f} µs, receiver {statistics.median(rc) * 1e6:.0f} µs")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", default="trio,asyncio")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--setups", type=int, default=300, help="connections for setup latency")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams for RSS")
    parser.add_argument("--window", type=int, default=0, help="stream_window (0: the default)")
    parser.add_argument("--tcp-window", type=int, default=0, help="tcp_stream_window (0: default)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/tcp.json")
    parser.add_argument(
        "--setup-only", type=int, default=0, metavar="ROUNDS",
        help="only connection setup: ROUNDS interleaved rounds (direct, each driver), medians",
    )  # fmt: skip
    args = parser.parse_args()
    if args.setup_only:
        return setup_rounds(args)
    if shutil.which("iperf3") is None:
        print("iperf3 is not installed (Debian: iperf3)", file=sys.stderr)
        return 2
    services = Services()
    iperf_port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    results: dict = {
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "window": args.window or "default",
        "runs": {},
    }
    try:
        wait_port(iperf_port)
        direct = {
            "iperf_1": iperf(iperf_port, 1, args.seconds),
            "iperf_8": iperf(iperf_port, 8, args.seconds),
            "setup_ms": setup_latency(services.port("banner"), args.setups),
        }
        results["direct"] = {
            "gbit_1": direct["iperf_1"],
            "gbit_8": direct["iperf_8"],
            "setup_p50_ms": statistics.median(direct["setup_ms"]),
            "setup_p90_ms": pct(direct["setup_ms"], 0.9),
        }
        print(f"direct: {direct['iperf_1']:.2f} Gbit/s (1), {direct['iperf_8']:.2f} Gbit/s (8), "
              f"setup p50 {results['direct']['setup_p50_ms']:.3f} ms")  # fmt: skip
        targets = {"iperf": iperf_port, "banner": services.port("banner"),
                   "echo": services.port("echo")}  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            for driver in args.drivers.split(","):
                pair = Pair(driver, Path(tmp), targets, args.window, args.tcp_window)
                try:
                    time.sleep(1)  # settle after start (imports, first connections)
                    idle = pair.rss()
                    one = iperf(pair.public["iperf"], 1, args.seconds)
                    eight = iperf(pair.public["iperf"], 8, args.seconds)
                    setup = setup_latency(pair.public["banner"], args.setups)
                    before = pair.rss()
                    socks = hold_streams(pair.public["echo"], args.streams)
                    time.sleep(0.5)
                    held = pair.rss()
                    for s in socks:
                        s.close()
                    run = {
                        "gbit_1": one,
                        "gbit_8": eight,
                        "setup_p50_ms": statistics.median(setup),
                        "setup_p90_ms": pct(setup, 0.9),
                        "added_p50_ms": statistics.median(setup)
                        - results["direct"]["setup_p50_ms"],
                        "rss_idle_mib": idle / 1024,
                        "rss_before_streams_mib": before / 1024,
                        "rss_streams_mib": held / 1024,
                        "rss_added_mib": (held - before) / 1024,
                    }
                    results["runs"][driver] = run
                    print(f"{driver}: {one:.2f} Gbit/s (1), {eight:.2f} Gbit/s (8), setup p50 "
                          f"{run['setup_p50_ms']:.3f} ms (+{run['added_p50_ms']:.3f}), RSS "
                          f"{run['rss_before_streams_mib']:.1f} -> {run['rss_streams_mib']:.1f} MiB "
                          f"with {args.streams} streams")  # fmt: skip
                finally:
                    pair.stop()
    finally:
        server.terminate()
        server.wait(10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
