"""Side by side in one run: uvicorn direct, the four anpx pairings, the reference anp-proxy.

    python bench/compare.py                 # 3 interleaved rounds, medians (about 12 minutes)
    python bench/compare.py --quick         # 1 short round, to try the setup (about 3 minutes)
    python bench/compare.py --no-reference  # without the reference implementation

Targets, all serving ``bench/app.py`` on 127.0.0.1 as separate processes, all started once
and measured in turn within each round:

* ``uvicorn h11``, ``uvicorn httptools+uvloop``: the app reached directly;
* ``trio/trio`` ... ``asyncio/asyncio``: an anpx gateway and receiver (gateway driver first);
* ``<pairing> py-mask``: the same with WebSocket masking in pure Python, as before
  ``anpx_core.wsmask`` (bulk transfers only: what the C masking gains, in the same run);
* ``asyncio/asyncio uvloop``: that pairing with ``loop = "uvloop"`` (when uvloop is installed);
* ``reference``: anp-proxy at 62776d6 (``reference.py``), gateway and receiver.

Each round runs: small GETs with wrk at each concurrency (req/s, p50, p99, CPU µs per
request of every process), 64 MiB up and down (MB/s, CPU per MiB, peak RSS over idle),
SSE time to the first event, and 200 slow requests at once (the app waits 1 s). Medians
across rounds are kept (peaks: the maximum). Writes ``bench/results/compare.json`` and
``compare.md``, and rewrites the generated part of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients
import compare_report
import reference
import report
from load import have_wrk, run_load
from procs import (
    DRIVERS,
    HOST,
    MemWatch,
    StartError,
    Target,
    _wait_ready,
    proc_cpu,
    proc_status,
    raise_fd_limit,
    sigterm_as_interrupt,
    start_direct,
    start_tunnel,
    stop_all,
)

MiB = 1024 * 1024
PAIRINGS = [f"{g}/{r}" for g in DRIVERS for r in DRIVERS]
DIRECT = {"uvicorn h11": ("h11", "asyncio"), "uvicorn httptools+uvloop": ("httptools", "uvloop")}
PY_MASK = " py-mask"
UVLOOP = " uvloop"  # the asyncio driver with `loop = "uvloop"` (the uvloop extra)
WITHOUT_SPEEDUPS = str(Path(__file__).resolve().with_name("without_speedups.py"))
RESULTS = Path(__file__).resolve().parent / "results"


def anpx_keys(bulk_bytes: int) -> dict[str, Any]:
    # 200 slow requests exceed the default max_streams_per_receiver (100, answered 503 by
    # design); 64 MiB bodies fit the default max_body_bytes, a slow pairing's transfer
    # must not meet the default 30 s timeout.
    # Every load comes from one address (127.0.0.1): the per-address caps (20 streams, 64
    # connections by default) would answer the excess 429 / 503 by design.
    return {
        "max_streams_per_receiver": 1024,
        "max_streams_per_address": 0,
        "max_connections_per_address": 0,
        "max_body_bytes": max(bulk_bytes + MiB, 100 * MiB),
        "timeout": 300.0,
    }


def start(name: str, logdir: Path, bulk_bytes: int) -> Target:
    if name in DIRECT:
        http, loop = DIRECT[name]
        target = start_direct(logdir, http=http, loop=loop)
    elif name == "reference":
        target = reference.start_reference(logdir)
    else:
        pairing = name.removesuffix(PY_MASK).removesuffix(UVLOOP)
        wrap = [WITHOUT_SPEEDUPS] if name.endswith(PY_MASK) else []
        gateway, receiver = pairing.split("/")
        keys = anpx_keys(bulk_bytes)
        wraps = {"gateway": wrap, "receiver": wrap}
        loop = "uvloop" if name.endswith(UVLOOP) else None
        target = start_tunnel(gateway, receiver, logdir, gateway_keys=keys, wrap=wraps, loop=loop)
    target.name = name
    return target


# --- one round of each measurement --------------------------------------------------------


def small_round(t: Target, c: int, duration: float) -> dict[str, Any]:
    cpu = {k: proc_cpu(pid) for k, pid in t.pids.items()}
    r = run_load(f"http://{HOST}:{t.port}/small", c, duration)
    n = max(1, r.requests)
    per_req = {k: (proc_cpu(pid) - cpu[k]) / n * 1e6 for k, pid in t.pids.items()}
    return {
        "rps": r.rps,
        "p50_ms": r.p50_ms,
        "p99_ms": r.p99_ms,
        "errors": r.errors,
        "non_2xx": r.non_2xx,
        "requests": r.requests,
        "cpu_us": per_req,
    }


def bulk_round(t: Target, direction: str, size: int) -> dict[str, Any]:
    fn = clients.upload if direction == "upload" else clients.download
    watch = MemWatch(t.pids)
    watch.start()
    cpu = {k: proc_cpu(pid) for k, pid in t.pids.items()}
    try:
        tr = fn(t.port, size, 300)
        out: dict[str, Any] = {"mb_s": tr.mb_per_s}
    except (OSError, clients.ClientError) as exc:
        # A failed response's headers say nothing more: the status is the reason.
        out = {"error": f"{type(exc).__name__}: {str(exc).split(', headers')[0]}"[:200]}
    watch.finish()
    out["cpu_ms_per_mib"] = {
        k: (proc_cpu(pid) - cpu[k]) * 1000 / (size / MiB) for k, pid in t.pids.items()
    }
    out["growth_mib"] = {k: v / MiB for k, v in watch.growth().items()}
    out["peak_mib"] = {k: v / MiB for k, v in watch.peak.items()}
    return out


def sse_round(t: Target, samples: int) -> dict[str, Any]:
    times, errors = [], 0
    for _ in range(samples):
        try:
            times.append(clients.sse_first_event(t.port, 10) * 1000)
        except (OSError, clients.ClientError):
            errors += 1
    return {"ms": times, "errors": errors}


SLOW_TIMEOUT = 15.0
RECOVERY = 60.0


async def _slow_burst(port: int, count: int) -> tuple[int, float, dict[str, int]]:
    """``count`` connections, then one ``GET /delay?ms=1000`` on each at once; each answer
    must come within SLOW_TIMEOUT. Returns the successes, the seconds from the first request
    to the last answer, and the failures by kind."""
    gate = asyncio.Semaphore(count)
    opened = await asyncio.gather(
        *(clients._open(port, gate, SLOW_TIMEOUT) for _ in range(count)), return_exceptions=True
    )
    conns = [c for c in opened if not isinstance(c, BaseException)]
    request = f"GET /delay?ms=1000 HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    start = time.perf_counter()
    last = start

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        nonlocal last
        status = await asyncio.wait_for(clients._exchange(reader, writer, request), SLOW_TIMEOUT)
        last = time.perf_counter()
        return status

    results = await asyncio.gather(*(one(r, w) for r, w in conns), return_exceptions=True)
    await clients._close_all(conns)
    failures: dict[str, int] = {}
    for res in [*(c for c in opened if isinstance(c, BaseException)), *results]:
        if res != 200:
            key = f"status {res}" if isinstance(res, int) else type(res).__name__
            failures[key] = failures.get(key, 0) + 1
    return sum(1 for r in results if r == 200), last - start, failures


def slow_round(t: Target, count: int) -> dict[str, Any]:
    watch = MemWatch(t.pids)
    watch.start()
    ok, wall, failures = asyncio.run(_slow_burst(t.port, count))
    watch.finish()
    return {
        "ok": ok,
        "total": count,
        "wall_s": wall,
        "failures": failures,
        "growth_mib": {k: v / MiB for k, v in watch.growth().items()},
        "peak_mib": {k: v / MiB for k, v in watch.peak.items()},
    }


# --- the run ------------------------------------------------------------------------------


def recover(t: Target, logdir: Path, bulk_bytes: int, raw: dict[str, Any]) -> Target:
    """After a failed transfer, wait until the target answers again (the reference's receiver
    reconnects once it has finished the abandoned response); restart it if it does not within
    RECOVERY seconds, so that no later measurement counts its error answers."""
    try:
        _wait_ready(t.port, t.procs, logdir / "recovery.log", RECOVERY)
        raw["recovered"].append(t.name)
        return t
    except StartError:
        log(f"  {t.name} not answering {RECOVERY:.0f} s after a failed transfer: restarted")
        raw["restarted"].append(t.name)
        t.stop()
        return start(t.name, logdir, bulk_bytes)


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    logdir = args.out / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    for old in logdir.iterdir():
        old.unlink()
    main_targets = [*DIRECT, *PAIRINGS] + ([] if args.no_reference else ["reference"])
    if importlib.util.find_spec("uvloop") is not None:
        main_targets.append("asyncio/asyncio" + UVLOOP)
    bulk_targets = [*main_targets, *(p + PY_MASK for p in PAIRINGS)]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",")]
        main_targets = [n for n in main_targets if n in wanted]
        bulk_targets = [n for n in bulk_targets if n in wanted]
    raw: dict[str, Any] = {"small": {}, "bulk": {}, "sse": {}, "slow": {}, "loadavg": []}
    raw["recovered"], raw["restarted"] = [], []
    targets: dict[str, Target] = {}
    for name in bulk_targets:
        log(f"starting {name}")
        targets[name] = start(name, logdir, args.bulk_bytes)
    raw["idle_rss_mib"] = {
        n: {k: proc_status(pid)["VmRSS"] / MiB for k, pid in t.pids.items()}
        for n, t in targets.items()
    }
    for t in (targets[n] for n in main_targets):  # warm-up: imports, first connections
        run_load(f"http://{HOST}:{t.port}/small", 16, 1)
    for rnd in range(args.rounds):
        raw["loadavg"].append(report.load_average())
        log(f"round {rnd + 1}/{args.rounds} (load average {raw['loadavg'][-1]})")
        for c in args.concurrency:
            for name in main_targets:
                r = small_round(targets[name], c, args.duration)
                raw["small"].setdefault(name, {}).setdefault(str(c), []).append(r)
                cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us"].items())
                log(
                    f"  c={c:<3} {name:<25} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.3f} ms"
                    f"  p99 {r['p99_ms']:8.3f} ms  errors {r['errors']}  CPU us/req {cpu}"
                )
        for name in bulk_targets:
            for direction in ("upload", "download"):
                r = bulk_round(targets[name], direction, args.bulk_bytes)
                raw["bulk"].setdefault(name, {}).setdefault(direction, []).append(r)
                text = f"{r['mb_s']:8.1f} MB/s" if "mb_s" in r else r["error"]
                log(f"  {direction:<8} {name:<25} {text}")
                if "error" in r:
                    targets[name] = recover(targets[name], logdir, args.bulk_bytes, raw)
        for name in main_targets:
            r = sse_round(targets[name], args.sse)
            raw["sse"].setdefault(name, []).append(r)
            if r["ms"]:
                log(f"  sse      {name:<25} p50 {statistics.median(r['ms']):7.3f} ms")
        for name in main_targets:
            r = slow_round(targets[name], args.slow)
            raw["slow"].setdefault(name, []).append(r)
            log(f"  {args.slow} slow {name:<25} ok {r['ok']}/{r['total']} in {r['wall_s']:.2f} s")
            if r["ok"] < r["total"]:
                # The reference keeps working through the requests the client gave up on
                # (one a second) and answers 503 meanwhile: start it afresh for the next round.
                log(f"  {name} failed slow requests: restarted")
                raw["restarted"].append(name)
                targets[name].stop()
                targets[name] = start(name, logdir, args.bulk_bytes)
    raw["loadavg"].append(report.load_average())
    for t in targets.values():
        t.stop()
    return raw


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round, 2 s loads, 16 MiB bodies")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk measurement")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--bulk-mib", type=int, default=64)
    p.add_argument("--sse", type=int, default=20, help="SSE samples per target per round")
    p.add_argument("--slow", type=int, default=200, help="slow requests in flight at once")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument(
        "--only",
        default="",
        help='comma-separated target names, e.g. "uvicorn h11,asyncio/asyncio,asyncio/asyncio uvloop"',
    )
    p.add_argument("--no-docs", action="store_true", help="leave docs/performance.md alone")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.bulk_mib, args.sse = 1, 2.0, 16, 5
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.bulk_bytes = args.bulk_mib * MiB
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not have_wrk():
        print("wrk is needed (apt-get install wrk): every target gets the same load generator")
        return 2
    sigterm_as_interrupt()
    raise_fd_limit(4 * args.slow + 1024)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = report.machine_info(None)
    machine["uvicorn"] = machine["uvicorn"].split(" ")[0]
    settings = {
        k: getattr(args, k)
        for k in (
            "rounds",
            "duration",
            "concurrency",
            "bulk_mib",
            "sse",
            "slow",
            "no_reference",
            "only",
        )
    }
    started = time.monotonic()
    try:
        raw = run(args)
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        return 130
    except StartError as exc:
        print(f"could not start a target: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    machine["loadavg_end"] = report.load_average()
    data = {
        "machine": machine,
        "settings": settings,
        "elapsed_s": round(time.monotonic() - started),
        "raw": raw,
    }
    data["summary"] = compare_report.summarise(raw)
    (args.out / "compare.json").write_text(json.dumps(data, indent=1))
    text = compare_report.markdown(data)
    (args.out / "compare.md").write_text(text)
    if not args.no_docs:
        compare_report.update_docs(text)
    print(f"wrote {args.out / 'compare.md'} ({data['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
