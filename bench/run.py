"""Run the anpx benchmark suite: every scenario, direct (uvicorn) vs through the tunnel.

    python bench/run.py                       # everything, full size (about 10 minutes)
    python bench/run.py --quick               # scaled down, about 2 minutes
    python bench/run.py --scenarios small,sse --pairings trio/trio

Writes bench/results/results.json, results.md (markdown tables) and results.png (chart).
All traffic stays on 127.0.0.1; every process started is stopped at the end, on error and
on Ctrl-C. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
from load import have_wrk
from procs import DRIVERS, raise_fd_limit, sigterm_as_interrupt, stop_all
from scenarios import SCENARIOS, Settings

MiB = 1024 * 1024
PAIRINGS = [f"{g}/{r}" for g in DRIVERS for r in DRIVERS]
RESULTS = Path(__file__).resolve().parent / "results"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="scaled-down sizes and durations")
    p.add_argument(
        "--scenarios", type=_csv, default=list(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}"
    )
    p.add_argument(
        "--pairings",
        type=_csv,
        default=PAIRINGS,
        help=f"gateway/receiver driver pairs (default: {','.join(PAIRINGS)})",
    )
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in _csv(v)], default=None)
    p.add_argument("--duration", type=float, help="seconds per small-GET measurement")
    p.add_argument("--repeat", type=int, help="small-GET repetitions (median kept)")
    p.add_argument("--bulk-mib", type=int, help="bulk body size in MiB (default 1024)")
    p.add_argument("--burst", type=int, help="requests in flight at once (default 5000)")
    p.add_argument("--idle", type=int, help="idle keep-alive connections (default 2000)")
    p.add_argument("--sse", type=int, help="SSE samples per target (default 100)")
    p.add_argument(
        "--access-log",
        action="store_true",
        help="keep access logs on (anpx at INFO, uvicorn's access log) in the small-GET runs",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        type=_override,
        metavar="SECTION.KEY=VALUE",
        help="extra anpx config key for every run, TOML value, e.g. gateway.stream_window=0 "
        "(repeatable; recorded in the results)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = p.parse_args(argv)
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    bad += [x for x in args.pairings if x not in PAIRINGS]
    if bad:
        p.error(f"unknown scenario or pairing: {', '.join(bad)}")
    return args


def settings_from(args: argparse.Namespace, logdir: Path) -> Settings:
    s = Settings(pairings=args.pairings, logdir=logdir, generator=args.generator)
    if args.quick:
        s.duration, s.warmup, s.repeat = 2.0, 1.0, 1
        s.bulk_bytes, s.burst, s.idle, s.sse = 128 * MiB, 1000, 500, 20
    s.concurrency = args.concurrency or s.concurrency
    s.duration = args.duration or s.duration
    s.repeat = args.repeat or s.repeat
    s.bulk_bytes = args.bulk_mib * MiB if args.bulk_mib else s.bulk_bytes
    s.burst = args.burst or s.burst
    s.idle = args.idle or s.idle
    s.sse = args.sse or s.sse
    s.access_log = args.access_log
    for item in args.set:
        s.extra.setdefault(item.section, {})[item.key] = item.value
    return s


@dataclass
class Override:
    section: str
    key: str
    value: object


def _override(text: str) -> Override:
    """``gateway.stream_window=0`` -> Override("gateway", "stream_window", 0)."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or section not in ("gateway", "receiver"):
        raise argparse.ArgumentTypeError(
            f"expected gateway.KEY=VALUE or receiver.KEY=VALUE: {text}"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text}: not a TOML value ({exc})") from None
    return Override(section, key.strip(), value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_interrupt()
    args.out.mkdir(parents=True, exist_ok=True)
    logdir = args.out / "logs"
    logdir.mkdir(exist_ok=True)
    for old in logdir.iterdir():
        old.unlink()
    s = settings_from(args, logdir)
    if s.generator == "auto":
        s.generator = "wrk" if have_wrk() else "python"
    if s.generator == "python":
        print(
            "wrk not found (apt-get install wrk): using the Python load generator (figures not comparable with wrk's)"
        )
    limit = raise_fd_limit(2 * max(s.burst, s.idle) + 1024)
    if limit < 2 * max(s.burst, s.idle) + 256:
        print(f"open-file limit {limit} is too low for {s.burst} connections: raise ulimit -n")
        return 2
    machine = report.machine_info(s)
    print(f"machine: {machine['cpu']} x{machine['nproc']}, Python {machine['python']}")
    busy = (
        float(machine["loadavg_start"].split()[0]) if machine["loadavg_start"][0].isdigit() else 0
    )
    if busy > 0.5 * (machine["nproc"] or 1):
        print(f"warning: load average {machine['loadavg_start']}: other work will skew figures")
    data: dict = {"machine": machine, "settings": report.settings_info(s), "results": {}}
    started = time.monotonic()
    try:
        for name in args.scenarios:
            t0 = time.monotonic()
            print(f"{name}:", flush=True)
            data["results"][name] = SCENARIOS[name](s)
            print(f"  ({time.monotonic() - t0:.0f}s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        stop_all()
        data["elapsed_s"] = round(time.monotonic() - started, 1)
        data["machine"]["loadavg_end"] = report.load_average()
        if data["results"]:
            (args.out / "results.json").write_text(json.dumps(data, indent=1))
            (args.out / "results.md").write_text(report.markdown(data))
            report.chart(data, args.out / "results.png")
            print(f"wrote {args.out / 'results.md'} and results.png ({data['elapsed_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
