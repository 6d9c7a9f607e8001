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
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import run_load
from bench.procs import APP, HOST, Target, free_port, spawn, start_tunnel, stop_all

CONFIGS = (("1 worker", 1, 1), ("2 workers", 2, 1), ("2 workers, 2 receivers", 2, 2))


def wait_all_ready(admin: int, workers: int, timeout: float = 30.0) -> None:
    """Until every worker has every receiver (the supervisor's combined /health)."""
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
            return
        time.sleep(0.05)
    raise RuntimeError(f"the gateway's workers were not all ready after {timeout}s")


def start(driver: str, workers: int, receivers: int, logdir: Path) -> Target:
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
    wait_all_ready(admin, workers)
    return target


def _tunnel_url(target: Target) -> str:
    args = target.procs[1].args  # the first receiver's command line
    assert isinstance(args, list)
    return str(args[args.index("--gateway-url") + 1])


def measure(
    drivers: list[str], rounds: int, duration: float, conns: list[int], logdir: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for _round in range(rounds):
        for driver in drivers:
            for name, workers, receivers in CONFIGS:
                target = start(driver, workers, receivers, logdir)
                try:
                    for c in conns:
                        load = run_load(f"http://{HOST}:{target.port}/small", c, duration)
                        key = f"{driver}|{name}|{c}"
                        results.setdefault(key, []).append(
                            {"rps": load.rps, "p50_ms": load.p50_ms, "errors": load.errors}
                        )
                        print(
                            f"  {driver:8} {name:24} c={c:<3} {load.rps:8.0f} req/s  p50 {load.p50_ms:.2f} ms  errors {load.errors}",
                            flush=True,
                        )
                finally:
                    target.stop()
    return results


def table(results: dict[str, Any], drivers: list[str], conns: list[int]) -> str:
    lines = [
        "| driver | configuration | " + " | ".join(f"c={c} req/s (x vs 1)" for c in conns) + " |"
    ]
    lines.append("|---|---|" + "---|" * len(conns))
    for driver in drivers:
        base = {
            c: statistics.median(r["rps"] for r in results[f"{driver}|1 worker|{c}"]) for c in conns
        }
        for name, _w, _r in CONFIGS:
            cells = []
            for c in conns:
                rps = statistics.median(r["rps"] for r in results[f"{driver}|{name}|{c}"])
                cells.append(f"{rps:,.0f} ({rps / base[c]:.2f}x)")
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
