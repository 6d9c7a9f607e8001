"""WebSocket echo through the tunnel vs direct, in the same run (issue 15).

The app (bench/app.py, WebSocket ``/ws``: echo) runs under uvicorn (``direct``) and behind
anpx gateway + receiver processes (``<gateway driver>/<receiver driver>``). One client
process (this one, websockets on asyncio) measures, per target and round:

* **round trip**: one small message sent, its echo awaited, ``--rtt-count`` times on one
  connection; the p50 and p99 of those;
* **messages/s**: ``--burst`` messages on one connection with at most ``--window``
  unanswered at a time; echoed messages per second.

Rounds interleave the targets (direct, tunnel, direct, ...) so a machine that gets busier
during the run affects both alike; the figures reported are the medians over rounds.

    python bench/ws_echo.py [--rounds 5] [--targets direct,trio/trio,asyncio/asyncio]
    python bench/ws_echo.py --json bench/results/ws_echo.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import HOST, Target, running

PAYLOAD = "x" * 32


async def round_trips(url: str, count: int) -> list[float]:
    times = []
    async with connect(url, compression=None, max_size=None) as ws:
        for _ in range(20):  # warm up
            await ws.send(PAYLOAD)
            await ws.recv()
        for _ in range(count):
            start = time.perf_counter()
            await ws.send(PAYLOAD)
            await ws.recv()
            times.append(time.perf_counter() - start)
    return times


async def throughput(url: str, count: int, window: int) -> float:
    async with connect(url, compression=None, max_size=None) as ws:
        slots = asyncio.Semaphore(window)

        async def sender() -> None:
            for _ in range(count):
                await slots.acquire()
                await ws.send(PAYLOAD)

        start = time.perf_counter()
        task = asyncio.create_task(sender())
        for _ in range(count):
            await ws.recv()
            slots.release()
        elapsed = time.perf_counter() - start
        await task
    return count / elapsed


def measure(target: Target, args: argparse.Namespace) -> dict[str, float]:
    url = f"ws://{HOST}:{target.port}/ws"
    rtts = asyncio.run(round_trips(url, args.rtt_count))
    rate = asyncio.run(throughput(url, args.burst, args.window))
    q = statistics.quantiles(rtts, n=100)
    return {"p50_ms": statistics.median(rtts) * 1000, "p99_ms": q[98] * 1000, "msgs_per_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--targets", default="direct,trio/trio,asyncio/asyncio,trio/asyncio,asyncio/trio"
    )
    parser.add_argument("--rtt-count", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--json", type=Path, help="write the per-round figures here")
    args = parser.parse_args()
    names = args.targets.split(",")
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp, running(names, Path(tmp)) as targets:
        for r in range(args.rounds):
            for target in targets if r % 2 == 0 else reversed(targets):
                rounds[target.name].append(measure(target, args))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{'target':<18} {'rtt p50 ms':>11} {'rtt p99 ms':>11} {'msgs/s':>9}")
    summary = {}
    for name, results in rounds.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        summary[name] = med
        print(f"{name:<18} {med['p50_ms']:>11.3f} {med['p99_ms']:>11.3f} {med['msgs_per_s']:>9.0f}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "medians": summary}, indent=2))


if __name__ == "__main__":
    main()
