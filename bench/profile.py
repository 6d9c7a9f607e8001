"""Where the gateway's and the receiver's CPU time goes under small-GET load (py-spy).

    pip install py-spy
    python bench/profile.py                          # trio/trio, c=16, 15 s
    python bench/profile.py --pairing asyncio/asyncio --concurrency 1 --duration 20

Starts one gateway/receiver pair, loads it with ``wrk`` (or the Python fallback), samples both
processes with ``py-spy record`` (busy samples only: time spent waiting in
epoll is not counted) and writes to bench/results/:

* ``profile-<pairing>-<process>.txt``: collapsed stacks (flamegraph.pl / speedscope input);
* ``profile-<pairing>.md``: per process, the share of busy samples by area (file or
  package) and the top functions by self time and by inclusive time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients
from load import run_load
from procs import HOST, proc_cpu, running, sigterm_as_interrupt, stop_all

RESULTS = Path(__file__).resolve().parent / "results"
_INCLUSIVE = ("anpx_core/", "anpx_trio/", "anpx_asyncio/", "h11/", "wsproto/")
_WAITS = {"<method 'poll' of 'select.epoll' objects>"}
# Frames on every stack (start-up, the event loop's entry): no information in their share.
_TRIVIAL = {"<module>", "main", "run_cli", "main.<locals>.<lambda>", "run", "_run"}


def area(path: str) -> str:
    """A readable bucket for a frame's file: our modules by name, libraries by package."""
    for ours in ("anpx_core/", "anpx_trio/", "anpx_asyncio/", "bench/"):
        if ours in path:
            return ours + path.split(ours, 1)[1]
    for lib in ("h11", "wsproto", "trio", "anyio", "asyncio", "logging", "uuid", "selectors"):
        if f"/{lib}/" in path or path.startswith(f"{lib}/") or path.endswith(f"/{lib}.py"):
            return lib
    return "other: " + path.rsplit("/", 1)[-1]


def parse_frame(frame: str) -> tuple[str, str]:
    """``"func (path/file.py:12)"`` -> (``"func"``, ``"path/file.py"``)."""
    name, _, where = frame.rpartition(" (")
    return name, where.rstrip(")").rsplit(":", 1)[0]


def load_stacks(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def summarise(stacks: Counter[tuple[str, ...]], top: int) -> list[str]:
    total = sum(stacks.values())
    if not total:
        return ["(no samples)", ""]
    by_area: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, n in stacks.items():
        name, path = parse_frame(stack[-1])
        by_area[area(path)] += n
        self_time[f"{name} ({path})"] += n
        for frame in set(stack):
            fname, fpath = parse_frame(frame)
            if fname not in _TRIVIAL and any(p in fpath for p in _INCLUSIVE):
                inclusive[f"{fname} ({fpath})"] += n

    def table(title: str, counts: Counter[str], limit: int) -> list[str]:
        rows = [f"**{title}**", "", "| share | where |", "|---:|---|"]
        rows += [f"| {n / total:.1%} | `{key}` |" for key, n in counts.most_common(limit)]
        return [*rows, ""]

    out = [f"{total} busy samples.", ""]
    out += table("Self time by area", by_area, top)
    out += table("Top functions by self time", self_time, top)
    out += table("Top anpx / h11 / wsproto functions by inclusive time", inclusive, top)
    return out


def bulk_load(port: int, direction: str, duration: float, size: int) -> tuple[int, float]:
    """Back-to-back transfers of ``size`` bytes for ``duration`` s: (bytes moved, seconds)."""
    fn = clients.upload if direction == "upload" else clients.download
    moved, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        moved += fn(port, size, 60).nbytes
    return moved, time.perf_counter() - start


def summarise_cprofile(path: Path, units: int, unit: str, top: int) -> list[str]:
    """Deterministic profile: own time by area and the top functions with calls per unit."""
    import pstats

    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    # Time blocked in epoll is waiting, not work (cProfile measures wall time).
    waiting = sum(v[2] for k, v in stats.items() if k[2] in _WAITS)
    total = sum(v[2] for v in stats.values()) - waiting
    by_area: Counter[str] = Counter()
    rows = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.items():
        if func in _WAITS:
            continue
        where = "C builtins" if file == "~" else area(file)
        by_area[where] += tottime
        name = func if file == "~" else f"{func} ({where}:{line})"
        rows.append((tottime, cumtime, ncalls, name))
    out = [
        f"{total:.2f} s of profiled time, {waiting:.2f} s more waiting in epoll (whole "
        "process life, start-up included; cProfile roughly doubles the cost of each Python "
        "call).",
        "",
        "**Own time by area**",
        "",
        "| share | where |",
        "|---:|---|",
    ]
    out += [f"| {t / total:.1%} | `{k}` |" for k, t in by_area.most_common(top)]
    out += [
        "",
        f"**Top functions by own time** (calls per {unit})",
        "",
        f"| share | calls/{unit} | cumulative | function |",
        "|---:|---:|---:|---|",
    ]
    rows.sort(reverse=True)
    out += [
        f"| {t / total:.1%} | {n / units:.1f} | {c / total:.0%} | `{name}` |"
        for t, c, n, name in rows[:top]
    ]
    return [*out, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairing", default="trio/trio", help="gateway/receiver drivers")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=int, default=15)
    p.add_argument(
        "--profiler",
        choices=("py-spy", "cprofile"),
        default="py-spy",
        help="py-spy: sampling, attached to the running processes; cprofile: the processes "
        "run under cProfile (every call counted, slower)",
    )
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument(
        "--load",
        choices=("small", "upload", "download"),
        default="small",
        help="small GETs from the load generator, or back-to-back bulk transfers",
    )
    p.add_argument("--path", default="/small", help="the URL path of the small-GET load")
    p.add_argument("--bulk-mib", type=int, default=256, help="size of each bulk transfer")
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--top", type=int, default=20)
    p.add_argument(
        "--nonblocking",
        action="store_true",
        help="py-spy samples without pausing the processes (less overhead, less exact stacks)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    spy = args.profiler == "py-spy"
    if spy and shutil.which("py-spy") is None:
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.pairing.replace("/", "-") + ("" if args.load == "small" else f"-{args.load}")
    tag += "" if spy else "-cprofile"
    logdir = Path(tempfile.mkdtemp(prefix="anpx-profile-"))
    url_path = args.path
    keys = {"max_body_bytes": (args.bulk_mib + 1) << 20, "timeout": 600.0}
    outputs = {
        name: args.out / f"profile-{tag}-{name}.{'txt' if spy else 'prof'}"
        for name in ("gateway", "receiver")
    }
    wrap = {} if spy else {k: ["-m", "cProfile", "-o", str(v)] for k, v in outputs.items()}
    units = 0
    try:
        with running([args.pairing], logdir, gateway_keys=keys, wrap=wrap) as (t,):
            url = f"http://{HOST}:{t.port}{url_path}"
            units += run_load(url, args.concurrency, 2, args.generator).requests  # warm-up
            spies = []
            for name, pid in t.pids.items() if spy else ():
                argv_spy = ["py-spy", "record", "--pid", str(pid), "--rate", str(args.rate)]
                argv_spy += ["--duration", str(args.duration + 1), "--format", "raw"]
                argv_spy += ["--function", "-o", str(outputs[name])]
                if args.nonblocking:
                    argv_spy.append("--nonblocking")
                spies.append(subprocess.Popen(argv_spy, stdout=subprocess.DEVNULL))
            time.sleep(0.5)  # let py-spy attach before the load starts
            cpu = {k: proc_cpu(pid) for k, pid in t.pids.items()}
            if args.load == "small":
                result = run_load(url, args.concurrency, args.duration, args.generator)
                units, unit = (result.requests if spy else units + result.requests), "request"
                measured = result.requests
                figures = (
                    f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.3f} ms, "
                    f"p99 {result.p99_ms:.3f} ms"
                )
            else:
                moved, seconds = bulk_load(t.port, args.load, args.duration, args.bulk_mib << 20)
                units = measured = max(1, moved >> 20)
                unit = "MiB"
                figures = f"{args.load} {moved / seconds / 1e6:,.1f} MB/s"
            per_unit = {
                k: (proc_cpu(pid) - cpu[k]) / max(1, measured) * 1e6 for k, pid in t.pids.items()
            }
            for p_spy in spies:
                p_spy.wait(args.duration + 30)
    except KeyboardInterrupt:
        return 130
    finally:
        stop_all()  # under cProfile, the profile is written as the process exits
    cpu_text = ", ".join(f"{k} {v:.0f} µs" for k, v in per_unit.items())
    what = (
        f"GET {url_path} at concurrency {args.concurrency}"
        if args.load == "small"
        else f"back-to-back {args.bulk_mib} MiB {args.load}s"
    )
    if spy:
        how = f"py-spy ({args.rate} Hz{', non-blocking' if args.nonblocking else ''})"
        note = "Shares are of each process's busy samples (waiting in epoll excluded)."
    else:
        how = "cProfile"
        note = "Shares are of each process's profiled time."
    lines = [
        f"# Profile: {args.pairing}, {what}",
        "",
        f"{figures} under {how} for {args.duration} s; CPU per {unit}: {cpu_text}. {note}",
        "",
    ]
    for name, path in outputs.items():
        lines += [f"## {name}", ""]
        if spy:
            lines += summarise(load_stacks(path), args.top)
        else:
            lines += summarise_cprofile(path, units, unit, args.top)
    report = args.out / f"profile-{tag}.md"
    report.write_text("\n".join(lines))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
