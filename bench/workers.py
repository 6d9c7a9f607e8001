"""Requests/s of a gateway with 2 workers against 1, on this machine, in one run.

    python bench/workers.py                      # both drivers, 3 interleaved rounds, c=16 and 64
    python bench/workers.py --drivers asyncio --rounds 5 --duration 5

Each configuration is a gateway (``--workers N``) and receiver(s) of the same driver serving
``bench.app`` in-process, loaded with ``wrk`` on ``GET /small`` (keep-alive connections,
which the kernel spreads over the workers with SO_REUSEPORT when they connect):

* ``1 worker``: the single-process gateway, one receiver;
* ``2 workers``: a supervisor and two workers, one receiver given worker 0's URL (it learns
  worker 1's from the 101 and holds a tunnel to each);
* ``2 workers, 2 receivers``: the same with a second receiver process.

Rounds interleave the configurations so that a drift of the machine's load hits all alike;
the table gives medians. Results go to stdout and ``bench/results/workers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import run_load
from bench.procs import (
    APP,
    HOST,
    Target,
    free_port,
    proc_cpu,
    spawn,
    start_tunnel,
    stop_all,
)

CONFIGS = (("1 worker", 1, 1), ("2 workers", 2, 1), ("2 workers, 2 receivers", 2, 2))


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def wait_all_ready(admin: int, workers: int, timeout: float = 30.0) -> list[int]:
    """Until every worker has every receiver (the supervisor's combined /health); the
    workers' pids (none for a single process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{admin}/health", timeout=2) as r:
                health = json.loads(r.read())
        except OSError as exc:  # 503 while a worker has no receiver yet
            health = json.loads(exc.read()) if hasattr(exc, "read") else {}
        ready = [
            w for w in health.get("workers", [{"ready": health.get("ready")}]) if w.get("ready")
        ]
        if health.get("ready") and len(ready) == workers:
            return [w["pid"] for w in health.get("workers", [])]
        time.sleep(0.05)
    raise RuntimeError(f"the gateway's workers were not all ready after {timeout}s")


def start(
    driver: str, workers: int, receivers: int, logdir: Path
) -> tuple[Target, dict[str, list[int]]]:
    admin = free_port()
    # wrk is one address: the per-address fairness caps (20 requests in flight) would answer
    # most of c=64 with 503
    keys = {"workers": workers, "admin_port": admin, "max_streams_per_address": 0,
            "max_connections_per_address": 0}  # fmt: skip
    target = start_tunnel(driver, driver, logdir, gateway_keys=keys)
    if receivers > 1:
        config = next(logdir.glob("*.toml"))  # any of this run's: same keys
        url = _tunnel_url(target)
        for i in range(1, receivers):
            argv = [sys.executable, "-m", f"anpx_{driver}", "receiver", "-c", str(config)]
            argv += ["--gateway-url", url, "--local-app", APP, "--client-id", f"bench-{i}"]
            proc = spawn(argv, logdir / f"extra-receiver-{driver}-{i}-{time.time_ns()}.log")
            target.procs.append(proc)
    worker_pids = wait_all_ready(admin, workers) or [target.pids["gateway"]]
    pids = {"gateway": worker_pids, "receiver": [p.pid for p in target.procs[1:]]}
    return target, pids


def _tunnel_url(target: Target) -> str:
    args = target.procs[1].args  # the first receiver's command line
    assert isinstance(args, list)
    return str(args[args.index("--gateway-url") + 1])


def one_load(
    driver: str, name: str, c: int, duration: float, target: Target, pids: dict[str, list[int]]
) -> dict[str, float]:
    cpu0 = {k: sum(proc_cpu(p) for p in v) for k, v in pids.items()}
    busy0, total0 = machine_busy()
    load = run_load(f"http://{HOST}:{target.port}/small", c, duration)
    busy1, total1 = machine_busy()
    cpu1 = {k: sum(proc_cpu(p) for p in v) for k, v in pids.items()}
    n = max(load.requests, 1)
    row = {
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "errors": load.errors,
        # cores of the whole machine busy during the load (of os.cpu_count())
        "cores_busy": (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1),
        "gateway_us": (cpu1["gateway"] - cpu0["gateway"]) / n * 1e6,
        "receiver_us": (cpu1["receiver"] - cpu0["receiver"]) / n * 1e6,
    }
    print(
        f"  {driver:8} {name:24} c={c:<3} {load.rps:8.0f} req/s  p50 {load.p50_ms:.2f} ms  "
        f"errors {load.errors}  cores busy {row['cores_busy']:.2f}  CPU/req gateway "
        f"{row['gateway_us']:.0f} us receiver {row['receiver_us']:.0f} us",
        flush=True,
    )
    return row


def measure(
    drivers: list[str], rounds: int, duration: float, conns: list[int], logdir: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for _round in range(rounds):
        for driver in drivers:
            for name, workers, receivers in CONFIGS:
                target, pids = start(driver, workers, receivers, logdir)
                try:
                    for c in conns:
                        results.setdefault(f"{driver}|{name}|{c}", []).append(
                            one_load(driver, name, c, duration, target, pids)
                        )
                finally:
                    target.stop()
    return results


def table(results: dict[str, Any], drivers: list[str], conns: list[int]) -> str:
    head = " | ".join(f"c={c} req/s (x vs 1)" for c in conns)
    lines = [
        f"| driver | configuration | {head} | cores busy | CPU µs/request gateway + receiver |"
    ]
    lines.append("|---|---|" + "---|" * (len(conns) + 2))
    for driver in drivers:
        base = {
            c: statistics.median(r["rps"] for r in results[f"{driver}|1 worker|{c}"]) for c in conns
        }
        for name, _w, _r in CONFIGS:
            cells = []
            for c in conns:
                rps = statistics.median(r["rps"] for r in results[f"{driver}|{name}|{c}"])
                cells.append(f"{rps:,.0f} ({rps / base[c]:.2f}x)")
            rows = [r for c in conns for r in results[f"{driver}|{name}|{c}"]]
            busy = statistics.median(r["cores_busy"] for r in rows)
            gw = statistics.median(r["gateway_us"] for r in rows)
            rc = statistics.median(r["receiver_us"] for r in rows)
            cells += [f"{busy:.2f}", f"{gw:.0f} + {rc:.0f}"]
            lines.append(f"| {driver}/{driver} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--drivers", nargs="+", default=["trio", "asyncio"], choices=["trio", "asyncio"]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("results") / "workers.json"
    )
    args = parser.parse_args()
    logdir = Path(
        subprocess.check_output(
            ["mktemp", "-d", "/tmp/anpx-bench-workers.XXXXXX"], text=True
        ).strip()
    )
    print(f"logs in {logdir}; {args.rounds} rounds of {args.duration:.0f} s loads", flush=True)
    try:
        results = measure(args.drivers, args.rounds, args.duration, args.connections, logdir)
    finally:
        stop_all()
    text = table(results, args.drivers, args.connections)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "table": text}, indent=1) + "\n")


if __name__ == "__main__":
    main()
