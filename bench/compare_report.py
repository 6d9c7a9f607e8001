"""Tables for ``compare.py``: medians across rounds, ratios, and the targets of issue 19.

python bench/compare_report.py      # re-render compare.md (and the docs) from compare.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN = "<!-- compare.py: generated from here -->"
END = "<!-- compare.py: generated up to here -->"
H11, FAST, REF = "uvicorn h11", "uvicorn httptools+uvloop", "reference"
PY_MASK = " py-mask"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _by_process(runs: list[dict[str, float]], reduce: Any = statistics.median) -> dict:
    return {k: reduce([r[k] for r in runs]) for k in runs[0]} if runs else {}


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians across rounds (peaks: the maximum; failures: every round's)."""
    small = {
        name: {
            c: {
                "rps": _median([r["rps"] for r in runs]),
                "p50_ms": _median([r["p50_ms"] for r in runs]),
                "p99_ms": _median([r["p99_ms"] for r in runs]),
                "cpu_us": _by_process([r["cpu_us"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
                "non_2xx": sum(r.get("non_2xx", 0) for r in runs),
            }
            for c, runs in by_c.items()
        }
        for name, by_c in raw["small"].items()
    }
    bulk: dict[str, Any] = {}
    for name, by_dir in raw["bulk"].items():
        bulk[name] = {}
        for direction, runs in by_dir.items():
            ok = [r for r in runs if "mb_s" in r]
            bulk[name][direction] = {
                "mb_s": _median([r["mb_s"] for r in ok]),
                "errors": [r["error"] for r in runs if "error" in r],
                "cpu_ms_per_mib": _by_process([r["cpu_ms_per_mib"] for r in ok]),
                "growth_mib": _by_process([r["growth_mib"] for r in runs], max),
                "peak_mib": _by_process([r["peak_mib"] for r in runs], max),
            }
    sse = {}
    for name, runs in raw["sse"].items():
        times = sorted(t for r in runs for t in r["ms"])
        sse[name] = {
            "p50_ms": _median(times),
            "max_ms": times[-1] if times else None,
            "n": len(times),
            "errors": sum(r["errors"] for r in runs),
        }
    slow = {}
    for name, runs in raw["slow"].items():
        failures: dict[str, int] = {}
        for r in runs:
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        slow[name] = {
            "ok_min": min(r["ok"] for r in runs),
            "total": runs[0]["total"],
            "wall_s": _median([r["wall_s"] for r in runs]),
            "failures": failures,
            "growth_mib": _by_process([r["growth_mib"] for r in runs], max),
            "peak_mib": _by_process([r["peak_mib"] for r in runs], max),
        }
    return {"small": small, "bulk": bulk, "sse": sse, "slow": slow}


# --- rendering ----------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(a: float | None, b: float | None, digits: int = 2) -> str:
    return "-" if not a or not b else f"{a / b:.{digits}f}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return [*out, ""]


def _procs(values: dict[str, float], digits: int = 0) -> str:
    return " / ".join(_n(v, digits) for v in values.values()) if values else "-"


def _cpu_total(entry: dict[str, Any]) -> float | None:
    return sum(entry["cpu_us"].values()) if entry and entry["cpu_us"] else None


def markdown(data: dict[str, Any]) -> str:
    m, st, s = data["machine"], data["settings"], data["summary"]
    small, bulk, sse, slow = s["small"], s["bulk"], s["sse"], s["slow"]
    names = list(small)
    tunnels = [n for n in names if "/" in n]
    concurrency = [str(c) for c in st["concurrency"]]
    loads = data["raw"]["loadavg"]
    lines = [
        "# Side by side: direct, anpx, the reference",
        "",
        f"`python bench/compare.py`, {m['date']}, {st['rounds']} interleaved rounds "
        f"({data['elapsed_s']} s), medians across rounds. anpx at {m['commit']}; "
        f"{m['cpu']} x {m['nproc']}, Python {m['python']}, uvicorn {m['uvicorn']}, "
        f"{m['wrk']} (one thread, keep-alive).",
        "",
        f"**The machine is shared and noisy**: other sessions ran test suites during the run. "
        f"Load average (1, 5, 15 min) at the start of each round and at the end: "
        f"{'; '.join(loads)}. With 2 cores, req/s and latency move by tens of percent between "
        f"rounds; CPU µs per request moves much less.",
        "",
        "Targets: `uvicorn h11` / `uvicorn httptools+uvloop` serve `bench/app.py` directly; "
        "`g/r` is an anpx gateway (driver g) and receiver (driver r) serving it in-process; "
        "`reference` is anp-proxy 62776d6 (gateway and receiver, its locked dependencies, "
        "its rate limit lifted by `bench/reference_unlimited.py`). Auth and TLS off everywhere.",
        "",
        f"## Small GETs (wrk, {st['duration']} s per measurement)",
        "",
    ]
    header = ["target"]
    for c in concurrency:
        header += [f"c={c} req/s", "p50 ms", "p99 ms"]
    rows = []
    for name in names:
        row = [name]
        for c in concurrency:
            e = small[name].get(c)
            row += [_n(e["rps"]), _n(e["p50_ms"], 2), _n(e["p99_ms"], 2)] if e else ["-"] * 3
        rows.append(row)
    lines += _table(header, rows)
    errors = {n: sum(small[n][c]["errors"] for c in small[n]) for n in names}
    if any(errors.values()):
        text = ", ".join(
            f"{n} {e} (of which {sum(small[n][c]['non_2xx'] for c in small[n])} not 2xx)"
            for n, e in errors.items()
            if e
        )
        lines += [f"Errors counted by wrk, all rounds: {text}.", ""]
    lines += [
        "**CPU µs per request** (from /proc/<pid>/stat; per process: uvicorn, or gateway / "
        "receiver):",
        "",
    ]
    rows = []
    h11_cpu = {c: _cpu_total(small.get(H11, {}).get(c)) for c in concurrency}
    for name in names:
        row = [name]
        for c in concurrency:
            e = small[name].get(c)
            total = _cpu_total(e)
            row += [_procs(e["cpu_us"]) if e else "-", _n(total), _x(total, h11_cpu[c])]
        rows.append(row)
    header = ["target"]
    for c in concurrency:
        header += [f"c={c} per process", "total", "÷ h11"]
    lines += _table(header, rows)

    lines += ["**Ratios at c=16** (req/s; p50 at c=1):", ""]
    rows = []
    at = "16" if "16" in concurrency else concurrency[0]
    first = concurrency[0]

    def rps(name: str) -> float | None:
        return small.get(name, {}).get(at, {}).get("rps")

    def p50(name: str) -> float | None:
        return small.get(name, {}).get(first, {}).get("p50_ms")

    for name in [*tunnels, *([REF] if REF in small else [])]:
        rows.append(
            [
                name,
                _x(rps(name), rps(H11)),
                _x(rps(name), rps(FAST)),
                _x(rps(name), rps(REF)) if name != REF else "1",
                _x(p50(name), p50(H11)),
            ]
        )
    lines += _table(
        ["target", "÷ uvicorn h11", "÷ httptools+uvloop", "÷ reference", "c=1 p50 ÷ h11's"], rows
    )

    lines += [
        f"## {st['bulk_mib']} MiB up and down",
        "",
        "One request each way per round on a fresh connection; the client streams from and "
        "to a reused buffer. CPU is ms per MiB of body; RSS growth is the peak (VmHWM, reset "
        "before each transfer) over the RSS just before it, the maximum across rounds. "
        "`py-mask`: the same pairing with WebSocket masking in pure Python (wsproto's own "
        "masker, as before `anpx_core.wsmask`), measured in the same rounds.",
        "",
    ]
    rows = []
    for name, e in bulk.items():
        up, down = e["upload"], e["download"]
        rows.append(
            [
                name,
                _n(up["mb_s"]),
                _n(down["mb_s"]),
                _x(down["mb_s"], up["mb_s"]),
                _procs(up["cpu_ms_per_mib"], 1),
                _procs(down["cpu_ms_per_mib"], 1),
                _x(sum(down["cpu_ms_per_mib"].values()), sum(up["cpu_ms_per_mib"].values())),
                _procs(up["growth_mib"], 1),
                _procs(down["growth_mib"], 1),
            ]
        )
        if up["errors"] or down["errors"]:
            rows[-1][0] += f" (failed: {'; '.join(sorted(set(up['errors'] + down['errors'])))})"
    lines += _table(
        [
            "target",
            "upload MB/s",
            "download MB/s",
            "down ÷ up",
            "CPU ms/MiB up",
            "CPU ms/MiB down",
            "CPU down ÷ up",
            "RSS growth MiB up",
            "RSS growth MiB down",
        ],
        rows,
    )
    raw = data["raw"]
    if raw.get("recovered") or raw.get("restarted"):
        lines += [
            "After a failed transfer the run waits up to 60 s for the target to answer again "
            f"(it did: {', '.join(raw.get('recovered', [])) or 'none'}), or restarts it; a "
            "target that failed slow requests is restarted after them (restarts: "
            f"{', '.join(raw.get('restarted', [])) or 'none'}), so that later measurements "
            "do not count its error answers.",
            "",
        ]
    masked = [n for n in bulk if n.endswith(PY_MASK)]
    if masked:
        rows = []
        for name in masked:
            pairing = name.removesuffix(PY_MASK)
            before, after = bulk[name]["download"]["mb_s"], bulk[pairing]["download"]["mb_s"]
            rows.append(
                [
                    pairing,
                    _n(before),
                    _n(after),
                    _x(after, before),
                    _x(after, bulk[pairing]["upload"]["mb_s"]),
                ]
            )
        lines += ["**Downloads before and after C masking** (same run):", ""]
        lines += _table(
            ["pairing", "pure-Python mask MB/s", "C mask MB/s", "gain", "download ÷ upload"], rows
        )
    lines += ["## SSE: time to the first event", ""]
    lines += [
        "A fresh connection per sample, opened before the clock starts; the app sends the "
        "first event at once and two more 10 ms apart.",
        "",
    ]
    rows = [
        [n, _n(e["p50_ms"], 2), _n(e["max_ms"], 2), str(e["n"]), str(e["errors"])]
        for n, e in sse.items()
    ]
    lines += _table(["target", "p50 ms", "max ms", "samples", "errors"], rows)
    lines += [
        f"## {st['slow']} slow requests at once",
        "",
        f"{st['slow']} connections opened, then one `GET /delay?ms=1000` on each at once, "
        "each answer due within 15 s: successes (the worst round), wall time from the first "
        "request to the last successful answer (the median across rounds), peak RSS growth. "
        "anpx runs with "
        "`max_streams_per_receiver = 1024` (its default, 100, would answer 503 to the "
        "excess by design); the reference's 100 pending requests per receiver is hard-coded.",
        "",
    ]
    rows = [
        [
            n,
            f"{e['ok_min']}/{e['total']}",
            _n(e["wall_s"], 2),
            ", ".join(f"{k}: {v}" for k, v in e["failures"].items()) or "none",
            _procs(e["growth_mib"], 1),
        ]
        for n, e in slow.items()
    ]
    lines += _table(["target", "ok", "wall s", "failures (all rounds)", "RSS growth MiB"], rows)
    lines += ["## Peak RSS per process (MiB, the largest over the bulk and slow measurements)", ""]
    rows = []
    for n in bulk:
        peaks: dict[str, float] = {}
        for entry in [bulk[n]["upload"], bulk[n]["download"], slow.get(n)]:
            for k, v in (entry or {}).get("peak_mib", {}).items():
                peaks[k] = max(peaks.get(k, 0.0), v)
        idle = data["raw"]["idle_rss_mib"].get(n, {})
        rows.append([n, _procs(idle, 1), _procs(peaks, 1)])
    lines += _table(["target", "RSS at start", "peak RSS"], rows)
    lines += _targets(s)
    return "\n".join(lines)


def _targets(s: dict[str, Any]) -> list[str]:
    """Issue 19's measurable targets, each with its figure."""
    small, bulk = s["small"], s["bulk"]
    rows = []

    def rps(name: str) -> float | None:
        return small.get(name, {}).get("16", {}).get("rps")

    def mark(ok: bool | None) -> str:
        return "-" if ok is None else ("✅" if ok else "❌")

    def ratio_row(
        goal: str, name: str, value: float | None, base: float | None, need: float
    ) -> None:
        ok = None if not value or not base else value / base >= need
        rows.append([goal, name, f"{_x(value, base)} {mark(ok)}"])

    for name in ("trio/trio", "asyncio/asyncio"):
        ratio_row("c=16 req/s ≥ 5x the reference's", name, rps(name), rps(REF), 5)
    for name in [n for n in small if "/" in n]:
        ratio_row("c=16 req/s ≥ 50% of direct h11", name, rps(name), rps(H11), 0.5)
    h11 = _cpu_total(small.get(H11, {}).get("16"))
    for name in [n for n in small if "/" in n]:
        total = _cpu_total(small[name].get("16"))
        ok = None if not total or not h11 else total <= 2 * h11
        rows.append(
            [
                "CPU per request (gw + rc) ≤ 2x direct h11's, c=16",
                name,
                f"{_x(total, h11)} {mark(ok)}",
            ]
        )
    for name in [n for n in bulk if "/" in n and not n.endswith(PY_MASK)]:
        up, down = bulk[name]["upload"]["mb_s"], bulk[name]["download"]["mb_s"]
        ok = None if not up or not down else down >= up
        rows.append(["download ≥ upload", name, f"{_n(down)} vs {_n(up)} MB/s {mark(ok)}"])
        ok = None if not down else down >= 250
        rows.append(["download ≥ 250 MB/s", name, f"{_n(down)} MB/s {mark(ok)}"])
        growth = max(
            [
                *bulk[name]["upload"]["growth_mib"].values(),
                *bulk[name]["download"]["growth_mib"].values(),
            ],
            default=None,
        )
        ok = None if growth is None else growth <= 32
        rows.append(["RSS growth ≤ 32 MiB per side", name, f"+{_n(growth, 1)} MiB {mark(ok)}"])
    return ["## Issue 19's targets", "", *_table(["target", "pairing", "measured"], rows)]


def update_docs(text: str, docs: Path = DOCS) -> None:
    """Replace the generated part of docs/performance.md (between the markers) with ``text``,
    its headings moved down two levels."""
    body = "\n".join(("##" + line) if line.startswith("#") else line for line in text.splitlines())
    current = docs.read_text()
    if BEGIN not in current or END not in current:
        raise SystemExit(f"{docs} lacks the markers {BEGIN!r} / {END!r}")
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    docs.write_text(f"{head}{BEGIN}\n\n{body.strip()}\n\n{END}{tail}")


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "compare.json"
    data = json.loads(path.read_text())
    data["summary"] = summarise(data["raw"])
    text = markdown(data)
    (path.parent / "compare.md").write_text(text)
    update_docs(text)
    print(f"wrote {path.parent / 'compare.md'} and {DOCS}")
