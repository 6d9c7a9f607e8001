"""The scenarios of issue 8: each measures the direct baseline and every pairing in one run.

Each function takes the run's :class:`Settings` and returns plain data (JSON-ready dicts keyed
by target name) that :mod:`report` turns into tables, ratios and a chart.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import clients
from load import run_load
from procs import HOST, MemWatch, proc_cpu, proc_status, running, start_target

MiB = 1024 * 1024


@dataclass
class Settings:
    pairings: list[str]
    logdir: Path
    generator: str = "auto"
    concurrency: list[int] = field(default_factory=lambda: [1, 16, 64, 256])
    duration: float = 6.0
    warmup: float = 2.0
    repeat: int = 3
    bulk_bytes: int = 1024 * MiB
    burst: int = 5000
    idle: int = 2000
    sse: int = 100
    access_log: bool = False
    #: Extra config keys for every anpx process (``--set gateway.stream_window=0``).
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: Any = print

    def keys(self, gateway: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments for :func:`procs.running`: scenario keys, then ``extra``."""
        return {
            "gateway_keys": {**(gateway or {}), **self.extra.get("gateway", {})},
            "receiver_keys": dict(self.extra.get("receiver", {})),
        }

    @property
    def targets(self) -> list[str]:
        return ["direct", *self.pairings]


def _mib(n: int) -> float:
    return round(n / MiB, 1)


# --- small GET ----------------------------------------------------------------------------


#: Default max_streams_per_receiver is 100: at concurrency 256 the gateway would answer
#: 503 to the requests beyond it (by design), so the small-GET runs raise it.
SMALL_KEYS = {"max_streams_per_receiver": 1024}


def small_get(s: Settings) -> dict[str, Any]:
    """req/s, p50, p99 at each concurrency; every target up at once and measured in turn
    (interleaved), ``repeat`` times; the median of each figure is kept."""
    runs: dict[str, dict[int, list[dict]]] = {t: {c: [] for c in s.concurrency} for t in s.targets}
    with running(s.targets, s.logdir, access_log=s.access_log, **s.keys(SMALL_KEYS)) as targets:
        for t in targets:
            run_load(f"http://{HOST}:{t.port}/small", 16, s.warmup, s.generator)
        for rep in range(s.repeat):
            for c in s.concurrency:
                for t in targets:
                    cpu = {k: proc_cpu(pid) for k, pid in t.pids.items()}
                    r = run_load(f"http://{HOST}:{t.port}/small", c, s.duration, s.generator)
                    # CPU time per request of each process: steadier than req/s on a busy host.
                    per_req = {
                        k: (proc_cpu(pid) - cpu[k]) / max(1, r.requests) * 1e6
                        for k, pid in t.pids.items()
                    }
                    runs[t.name][c].append(asdict(r) | {"rps": r.rps, "cpu_us": per_req})
                    cpu_text = ", ".join(f"{k} {v:.0f}" for k, v in per_req.items())
                    s.log(
                        f"  small GET rep {rep + 1} c={c:<3} {t.name:<16} {r.rps:9.0f} req/s "
                        f"p50 {r.p50_ms:7.3f} ms p99 {r.p99_ms:7.3f} ms errors {r.errors} "
                        f"CPU us/req {cpu_text}"
                    )
    out: dict[str, Any] = {}
    for name, by_c in runs.items():
        out[name] = {}
        for c, reps in by_c.items():
            out[name][c] = {
                key: statistics.median(r[key] for r in reps)
                for key in ("rps", "p50_ms", "p90_ms", "p99_ms")
            }
            out[name][c]["cpu_us"] = {
                k: statistics.median(r["cpu_us"][k] for r in reps) for k in reps[0]["cpu_us"]
            }
            out[name][c]["errors"] = sum(r["errors"] for r in reps)
            out[name][c]["non_2xx"] = sum(r["non_2xx"] for r in reps)
            out[name][c]["requests"] = sum(r["requests"] for r in reps)
            out[name][c]["generator"] = reps[0]["generator"]
    return out


# --- bulk ---------------------------------------------------------------------------------


def _bulk_keys(s: Settings) -> dict[str, Any]:
    # The body is bigger than the default max_body_bytes (100 MiB), and at a slow rate its
    # upload outlasts the default 30 s head timeout.
    return {"max_body_bytes": s.bulk_bytes + MiB, "timeout": 900.0}


def bulk(s: Settings) -> dict[str, Any]:
    """1 GiB up and down through each target, MB/s and peak RSS over idle RSS per process
    (each target freshly started, measured alone)."""
    out: dict[str, Any] = {}
    for name in s.targets:
        with running([name], s.logdir, **s.keys(_bulk_keys(s))) as (t,):
            out[name] = {}
            for direction, fn in (("upload", clients.upload), ("download", clients.download)):
                watch = MemWatch(t.pids)
                watch.start()
                try:
                    tr = fn(t.port, s.bulk_bytes, 60)
                    result: dict[str, Any] = {"mb_s": tr.mb_per_s, "seconds": tr.seconds}
                except (OSError, clients.ClientError) as exc:
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                watch.finish()
                result["idle_mib"] = {k: _mib(v) for k, v in watch.idle.items()}
                result["growth_mib"] = {k: _mib(v) for k, v in watch.growth().items()}
                result["peak_reset"] = watch.reset
                out[name][direction] = result
                s.log(f"  bulk {direction:<8} {name:<16} {_fmt_bulk(result)}")
    return out


def _fmt_bulk(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"FAILED {r['error']}"
    growth = ", ".join(f"{k} +{v} MiB" for k, v in r["growth_mib"].items())
    return f"{r['mb_s']:7.1f} MB/s in {r['seconds']:.1f}s; peak RSS {growth}"


# --- many requests in flight --------------------------------------------------------------


def _many_keys(n: int) -> dict[str, Any]:
    return {"max_connections": n + 1000, "max_streams_per_receiver": n + 1000, "timeout": 60.0}


def concurrent(s: Settings) -> dict[str, Any]:
    """``burst`` requests to ``/delay`` (1 s) in flight at once over one tunnel."""
    out: dict[str, Any] = {}
    for name in s.targets:
        with running([name], s.logdir, **s.keys(_many_keys(s.burst))) as (t,):
            watch = MemWatch(t.pids)
            watch.start()
            b = asyncio.run(
                clients.concurrent_burst(
                    t.port, s.burst, "/delay?ms=1000", connect_parallel=256, timeout=60
                )
            )
            watch.finish()
            out[name] = asdict(b) | {
                "idle_mib": {k: _mib(v) for k, v in watch.idle.items()},
                "growth_mib": {k: _mib(v) for k, v in watch.growth().items()},
            }
            s.log(
                f"  {s.burst} in flight {name:<16} ok {b.ok}/{b.total} wall {b.wall_seconds:.2f}s "
                f"(connect {b.connect_seconds:.2f}s) failures {b.failures or 'none'} "
                f"growth {out[name]['growth_mib']}"
            )
    return out


# --- SSE time to first event --------------------------------------------------------------


def sse(s: Settings) -> dict[str, Any]:
    """Time to the first event of a ``text/event-stream`` response, interleaved per target."""
    samples: dict[str, list[float]] = {t: [] for t in s.targets}
    errors: dict[str, int] = {t: 0 for t in s.targets}
    with running(s.targets, s.logdir, **s.keys()) as targets:
        for _ in range(3):  # warm-up: imports, first connections
            for t in targets:
                clients.sse_first_event(t.port, 10)
        for _ in range(s.sse):
            for t in targets:
                try:
                    samples[t.name].append(clients.sse_first_event(t.port, 10) * 1000)
                except (OSError, clients.ClientError):
                    errors[t.name] += 1
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = {
            "p50_ms": statistics.median(values),
            "p99_ms": values[min(len(values) - 1, int(0.99 * len(values)))],
            "n": len(values),
            "errors": errors[name],
        }
        s.log(f"  sse first event {name:<16} p50 {out[name]['p50_ms']:.3f} ms")
    return out


# --- idle keep-alive connections ----------------------------------------------------------


def idle(s: Settings) -> dict[str, Any]:
    """RSS of the process holding ``idle`` kept-alive client connections."""
    out: dict[str, Any] = {}
    # Every connection's first request is in flight at once: streams must not be the limit.
    keys = _many_keys(s.idle) | {"keepalive_timeout": 300.0}
    for name in s.targets:
        t = start_target(name, s.logdir, **s.keys(keys))
        try:
            front = "uvicorn" if t.direct else "gateway"
            before = {k: proc_status(pid)["VmRSS"] for k, pid in t.pids.items()}

            async def hold(port: int = t.port, pids: dict[str, int] = t.pids):
                conns = clients.IdleConnections(port, s.idle, connect_parallel=256, timeout=30)
                await conns.open()
                await asyncio.sleep(1.0)
                held = {k: proc_status(pid)["VmRSS"] for k, pid in pids.items()}
                alive = await conns.still_open()
                await conns.close()
                return conns.failures, alive, held, conns.reasons

            failures, alive, held, reasons = asyncio.run(hold())
            front_growth = held[front] - before[front]
            out[name] = {
                "before_mib": {k: _mib(v) for k, v in before.items()},
                "held_mib": {k: _mib(v) for k, v in held.items()},
                "kib_per_conn": front_growth / 1024 / s.idle,
                "failures": failures,
                "failure_reasons": reasons,
                "alive": alive,
            }
            s.log(
                f"  {s.idle} idle {name:<16} {front} {_mib(before[front])} -> "
                f"{_mib(held[front])} MiB ({out[name]['kib_per_conn']:.1f} KiB/conn), "
                f"alive {alive}, failures {failures} {reasons or ''}"
            )
        finally:
            t.stop()
        time.sleep(0.2)
    return out


SCENARIOS = {
    "small": small_get,
    "bulk": bulk,
    "concurrent": concurrent,
    "sse": sse,
    "idle": idle,
}
