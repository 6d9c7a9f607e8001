"""Results -> markdown tables (with ratios to direct and the issue's targets) and a PNG chart.

``python bench/report.py [results.json]`` re-renders results.md and results.png from a
saved run without measuring again.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from procs import REPO

# The targets of issue 8, evaluated on the figures of one run.
C16_RATIO = 0.30  # small GET req/s through the tunnel vs direct, concurrency 16
C1_ADDED_P50_MS = 0.3  # added median latency at concurrency 1
BULK_MB_S = 300.0  # each way
BULK_GROWTH_MIB = 32.0  # peak RSS over idle RSS, each side
BURST_WALL_S = 3.0  # 5,000 requests of 1 s each, all in flight at once
SSE_ADDED_MS = 5.0  # first event, tunnelled vs direct (medians)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def machine_info(settings: Any) -> dict[str, Any]:
    import uvicorn

    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _version(
        [
            "git",
            "-C",
            str(REPO),
            "status",
            "--porcelain",
            "--",
            "anpx_core",
            "anpx_trio",
            "anpx_asyncio",
        ]
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "uvicorn": f"{uvicorn.__version__} (h11, asyncio loop: named on its command line)",
        "wrk": _version(["wrk", "--version"]).split(" [")[0] if shutil.which("wrk") else "absent",
        "commit": commit + (" + uncommitted changes" if dirty else ""),
        "loadavg_start": load_average(),
    }


def load_average() -> str:
    """1-, 5- and 15-minute load averages: other work on the host skews every figure."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def settings_info(s: Any) -> dict[str, Any]:
    return {
        "generator": s.generator,
        "pairings": s.pairings,
        "concurrency": s.concurrency,
        "duration_s": s.duration,
        "repeat": s.repeat,
        "bulk_mib": s.bulk_bytes // (1024 * 1024),
        "burst": s.burst,
        "idle": s.idle,
        "sse": s.sse,
        "access_log": s.access_log,
        "extra": s.extra,
    }


# --- markdown -----------------------------------------------------------------------------


def _f(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _tunnels(results: dict[str, Any]) -> list[str]:
    return [name for name in results if name != "direct"]


def targets_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per target of the issue: the goal, each pairing's figure and pass/fail."""
    res, pairings = data["results"], data["settings"]["pairings"]
    rows: list[list[str]] = []

    def row(label: str, goal: str, cells: dict[str, tuple[str, bool] | None]) -> None:
        rows.append(
            [label, goal]
            + [
                f"{cells[p][0]} {_mark(cells[p][1])}" if cells.get(p) else "-"  # type: ignore[index]
                for p in pairings
            ]
        )

    small = res.get("small")
    if small and "16" in small.get("direct", {}):
        d = small["direct"]["16"]["rps"]
        row(
            "small GET req/s vs direct, c=16",
            f"≥ {C16_RATIO:.0%}",
            {
                p: (f"{small[p]['16']['rps'] / d:.1%}", small[p]["16"]["rps"] / d >= C16_RATIO)
                for p in pairings
                if p in small
            },
        )
    if small and "1" in small.get("direct", {}):
        d = small["direct"]["1"]["p50_ms"]
        row(
            "added p50 latency, c=1",
            f"≤ {C1_ADDED_P50_MS} ms",
            {
                p: (
                    f"+{small[p]['1']['p50_ms'] - d:.3f} ms",
                    small[p]["1"]["p50_ms"] - d <= C1_ADDED_P50_MS,
                )
                for p in pairings
                if p in small
            },
        )
    bulk = res.get("bulk")
    if bulk:
        for direction in ("upload", "download"):
            cells: dict[str, tuple[str, bool] | None] = {}
            mem: dict[str, tuple[str, bool] | None] = {}
            for p in pairings:
                r = bulk.get(p, {}).get(direction)
                if not r:
                    continue
                if "error" in r:
                    cells[p] = ("failed", False)
                else:
                    cells[p] = (f"{_f(r['mb_s'])} MB/s", r["mb_s"] >= BULK_MB_S)
                g = r["growth_mib"]
                mem[p] = (
                    f"gw +{g['gateway']} / rc +{g['receiver']} MiB",
                    max(g.values()) <= BULK_GROWTH_MIB,
                )
            row(f"bulk {direction} throughput", f"≥ {BULK_MB_S:.0f} MB/s", cells)
            row(
                f"bulk {direction} peak RSS over idle",
                f"≤ {BULK_GROWTH_MIB:.0f} MiB each side",
                mem,
            )
    burst = res.get("concurrent")
    if burst:
        n = data["settings"]["burst"]
        row(
            f"{n:,} in flight (1 s each)",
            f"0 failures, ≤ {BURST_WALL_S:.0f} s",
            {
                p: (
                    f"{burst[p]['ok']}/{burst[p]['total']} in {burst[p]['wall_seconds']:.2f} s",
                    burst[p]["ok"] == burst[p]["total"]
                    and burst[p]["wall_seconds"] <= BURST_WALL_S,
                )
                for p in pairings
                if p in burst
            },
        )
    sse = res.get("sse")
    if sse and "direct" in sse:
        d = sse["direct"]["p50_ms"]
        row(
            "SSE first event vs direct (p50)",
            f"≤ +{SSE_ADDED_MS:.0f} ms",
            {
                p: (
                    f"+{sse[p]['p50_ms'] - d:.2f} ms",
                    sse[p]["p50_ms"] - d <= SSE_ADDED_MS and not sse[p]["errors"],
                )
                for p in pairings
                if p in sse
            },
        )
    return rows


def markdown(data: dict[str, Any]) -> str:
    data = json.loads(json.dumps(data))  # integer keys become strings, as in a saved run
    m, s, res = data["machine"], data["settings"], data["results"]
    out = [
        "# anpx benchmark results",
        "",
        f"{m['date']}; {m['nproc']} x {m['cpu']}, Python {m['python']}, Linux {m['kernel']}; "
        f"anpx {m['commit']}; direct baseline uvicorn {m['uvicorn']}; load generator "
        f"{s['generator']} ({m['wrk']}); run took {data.get('elapsed_s', '?')} s; load average "
        f"{m.get('loadavg_start', '?')} at the start, {m.get('loadavg_end', '?')} at the end. "
        "Pairings are gateway driver / receiver driver; every tunnelled figure is from the "
        "same run as its direct figure. Regenerate with `python bench/run.py`.",
        "",
    ]
    extra = [
        f"{sec}.{k} = {v!r}" for sec, keys in s.get("extra", {}).items() for k, v in keys.items()
    ]
    if extra:
        out += [f"Extra configuration on every anpx process: {', '.join(extra)}.", ""]
    rows = targets_rows(data)
    if rows:
        out += ["## Targets (issue 8)", ""]
        out += _table(["target", "goal", *s["pairings"]], rows)
    small = res.get("small")
    if small:
        logs = "access logs on" if s["access_log"] else "access logs off on both paths"
        out += [
            f"## Small GET (`/small`, 13-byte body; {s['duration_s']:g} s per run, median of "
            f"{s['repeat']}; {logs})",
            "",
        ]
        rows = []
        for c in map(str, s["concurrency"]):
            d = small["direct"][c]
            for name, by_c in small.items():
                r = by_c[c]
                ratio = "1" if name == "direct" else f"{r['rps'] / d['rps']:.1%}"
                added = "" if name == "direct" else f"+{r['p50_ms'] - d['p50_ms']:.3f}"
                cpu = " + ".join(f"{v:.0f}" for v in r.get("cpu_us", {}).values())
                rows.append(
                    [
                        c,
                        name,
                        _f(r["rps"], 0),
                        ratio,
                        f"{r['p50_ms']:.3f}",
                        added,
                        f"{r['p99_ms']:.3f}",
                        cpu,
                        str(r["errors"]),
                    ]
                )
        out += _table(
            [
                "conc.",
                "path",
                "req/s",
                "vs direct",
                "p50 ms",
                "added p50 ms",
                "p99 ms",
                "CPU µs/req",
                "errors",
            ],
            rows,
        )
        out += [
            "CPU µs/req: CPU time (user + system) each process used per request during the run, "
            "from /proc/<pid>/stat: uvicorn for direct, gateway + receiver for the tunnel.",
            "",
        ]
    bulk = res.get("bulk")
    if bulk:
        out += [
            f"## Bulk ({s['bulk_mib']} MiB each way; RSS growth = peak VmHWM - idle VmRSS)",
            "",
        ]
        rows = []
        for name, by_dir in bulk.items():
            for direction, r in by_dir.items():
                d = bulk["direct"][direction]
                if "error" in r:
                    rows.append([direction, name, "failed: " + r["error"], "", "", ""])
                    continue
                ratio = "1" if name == "direct" else f"{r['mb_s'] / d.get('mb_s', 0):.1%}"
                idle = ", ".join(f"{k} {v}" for k, v in r["idle_mib"].items())
                growth = ", ".join(f"{k} +{v}" for k, v in r["growth_mib"].items())
                rows.append([direction, name, _f(r["mb_s"]), ratio, idle, growth])
        out += _table(
            ["direction", "path", "MB/s", "vs direct", "idle RSS MiB", "peak growth MiB"],
            rows,
        )
    burst = res.get("concurrent")
    if burst:
        out += [
            f"## {s['burst']:,} requests in flight at once (`/delay`: the app waits 1 s)",
            "",
            "Connections are opened first (256 at a time), then every request is written at "
            "once; wall time runs from the first request to the last response.",
            "",
        ]
        rows = []
        for name, r in burst.items():
            fails = ", ".join(f"{k}: {v}" for k, v in r["failures"].items()) or "0"
            growth = ", ".join(f"{k} +{v}" for k, v in r["growth_mib"].items())
            rows.append(
                [
                    name,
                    f"{r['ok']}/{r['total']}",
                    fails,
                    f"{r['wall_seconds']:.2f}",
                    f"{r['connect_seconds']:.2f}",
                    growth,
                ]
            )
        out += _table(
            ["path", "succeeded", "failures", "wall s", "connect s", "peak RSS growth MiB"], rows
        )
    sse = res.get("sse")
    if sse:
        out += [f"## SSE time to first event ({s['sse']} requests per path, interleaved)", ""]
        d = sse["direct"]["p50_ms"]
        rows = [
            [
                name,
                f"{r['p50_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                "" if name == "direct" else f"+{r['p50_ms'] - d:.3f}",
                str(r["errors"]),
            ]
            for name, r in sse.items()
        ]
        out += _table(["path", "p50 ms", "p99 ms", "added p50 ms", "errors"], rows)
    idle = res.get("idle")
    if idle:
        out += [f"## {s['idle']:,} idle keep-alive client connections", ""]
        d = idle["direct"]["kib_per_conn"]
        rows = []
        for name, r in idle.items():
            front = "uvicorn" if name == "direct" else "gateway"
            rows.append(
                [
                    name,
                    f"{r['before_mib'][front]}",
                    f"{r['held_mib'][front]}",
                    f"{r['kib_per_conn']:.1f}",
                    "1" if name == "direct" else f"{r['kib_per_conn'] / d:.2f}x",
                    f"{r['alive']}/{s['idle']}",
                ]
            )
        out += _table(
            ["path", "RSS before MiB", "RSS holding MiB", "KiB per conn", "vs direct", "held"],
            rows,
        )
    return "\n".join(out)


# --- chart --------------------------------------------------------------------------------


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    data = json.loads(json.dumps(data))
    res = data["results"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    names = ["direct", *data["settings"]["pairings"]]
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    width = 0.8 / len(names)

    def bars(ax, groups: list[str], value) -> None:
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, g in enumerate(groups):
                v = value(name, g)
                if v is not None:
                    xs.append(j + (i - (len(names) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=name, color=colors[name])
        ax.set_xticks(range(len(groups)), groups)

    small = res.get("small")
    if small:
        cs = [str(c) for c in data["settings"]["concurrency"]]
        bars(axes[0][0], cs, lambda n, c: small.get(n, {}).get(c, {}).get("rps"))
        axes[0][0].set(title="small GET throughput", xlabel="concurrency", ylabel="req/s")
        bars(axes[0][1], cs, lambda n, c: small.get(n, {}).get(c, {}).get("p50_ms"))
        axes[0][1].set(
            title="small GET median latency", xlabel="concurrency", ylabel="ms", yscale="log"
        )
        axes[0][0].legend()
    bulk = res.get("bulk")
    if bulk:
        bars(
            axes[1][0], ["upload", "download"], lambda n, d: bulk.get(n, {}).get(d, {}).get("mb_s")
        )
        axes[1][0].axhline(BULK_MB_S, color="grey", linestyle="--", linewidth=1)
        axes[1][0].set(title=f"bulk {data['settings']['bulk_mib']} MiB", ylabel="MB/s")
        axes[1][0].legend()
    other: list[tuple[str, Any]] = []
    if res.get("sse"):
        other.append(("SSE first event p50 (ms)", lambda n: res["sse"].get(n, {}).get("p50_ms")))
    if res.get("concurrent"):
        other.append(
            (
                f"{data['settings']['burst']} in flight: wall (s)",
                lambda n: res["concurrent"].get(n, {}).get("wall_seconds"),
            )
        )
    if res.get("idle"):
        other.append(("idle conn: KiB each", lambda n: res["idle"].get(n, {}).get("kib_per_conn")))
    if other:
        ax = axes[1][1]
        labels = [label for label, _ in other]
        bars(ax, labels, lambda n, label: dict(other)[label](n))
        ax.set(title="latency and capacity (lower is better)", yscale="log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_visible(False)
    m = data["machine"]
    fig.suptitle(
        f"anpx vs direct uvicorn — {m['nproc']} x {m['cpu']}, Python {m['python']}, {m['date']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results/results.json"
    data = json.loads(src.read_text())
    (src.parent / "results.md").write_text(markdown(data))
    chart(data, src.parent / "results.png")
    print(f"wrote {src.parent / 'results.md'} and results.png")


if __name__ == "__main__":
    main()
