"""System calls, sleeps and cores used per small GET, per process, for gateway/receiver pairings.

    python bench/syscalls_per_request.py                       # trio/trio and asyncio/asyncio
    python bench/syscalls_per_request.py --pairings trio/trio --concurrency 1,16 --rounds 5

Starts each pairing once, then in interleaved rounds loads it with ``wrk`` while ``perf stat``
counts, in the gateway and in the receiver, the system calls by kind (socket sends and
receives, epoll waits and re-arms) per request. Also per request: CPU µs, voluntary context
switches (each one is the process going to sleep in epoll: how often it ran out of work), and
for the pairing the cores busy, (gateway CPU + receiver CPU) / wall time: near 1 when the two
processes take turns, towards 2 when their work overlaps. Medians across rounds.

Needs ``perf`` allowed to read tracepoints (run as root, or perf_event_paranoid <= -1).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import anpx_keys
from load import have_wrk, run_load
from procs import HOST, proc_cpu, running, sigterm_as_interrupt, stop_all

SYSCALLS = ("sendto", "recvfrom", "epoll_wait", "epoll_ctl", "write", "read", "futex")
EVENTS = ["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{s}" for s in SYSCALLS)]
COLUMNS = ("syscalls", *SYSCALLS, "sleeps", "cpu_us")


def ctx_switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def perf_start(pid: int, out: Path) -> subprocess.Popen[bytes]:
    argv = ["perf", "stat", "-x,", "-o", str(out), "-e", ",".join(EVENTS), "-p", str(pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_finish(proc: subprocess.Popen[bytes], out: Path) -> dict[str, int]:
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split(",")
        if len(parts) < 3 or not parts[0].strip().isdigit():
            continue
        event = parts[2]
        name = "syscalls" if event == "raw_syscalls:sys_enter" else event.rsplit("_enter_", 1)[1]
        counts[name] = int(parts[0])
    return counts


def one_round(pids: dict[str, int], url: str, c: int, duration: float, tmp: Path) -> dict:
    perfs = {k: perf_start(pid, tmp / f"{k}.perf") for k, pid in pids.items()}
    time.sleep(0.3)  # perf attached before the load starts
    cpu = {k: proc_cpu(pid) for k, pid in pids.items()}
    sleeps = {k: ctx_switches(pid) for k, pid in pids.items()}
    wall = time.perf_counter()
    result = run_load(url, c, duration)
    wall = time.perf_counter() - wall
    n = max(1, result.requests)
    out: dict = {"rps": result.rps, "errors": result.errors}
    busy = 0.0
    for k, pid in pids.items():
        used = proc_cpu(pid) - cpu[k]
        busy += used
        row = {"cpu_us": used / n * 1e6, "sleeps": (ctx_switches(pid) - sleeps[k]) / n}
        row |= {s: v / n for s, v in perf_finish(perfs[k], tmp / f"{k}.perf").items()}
        out[k] = row
    # wrk's own start and stop are in the wall time: a slight underestimate
    out["cores"] = busy / wall
    return out


def median_row(rows: list[dict], key: str) -> dict[str, float]:
    return {col: statistics.median(r[key].get(col, 0.0) for r in rows) for col in COLUMNS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairings", default="trio/trio,asyncio/asyncio")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--path", default="/small")
    args = p.parse_args(argv)
    if not have_wrk():
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    names = [n.strip() for n in args.pairings.split(",") if n.strip()]
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="anpx-syscalls-"))
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        with running(names, tmp, gateway_keys=anpx_keys(0)) as targets:
            for t in targets:  # warm-up: imports, first connections
                run_load(f"http://{HOST}:{t.port}{args.path}", 16, 1)
            for rnd in range(args.rounds):
                print(f"round {rnd + 1}/{args.rounds}, load average {os.getloadavg()}", flush=True)
                for c in levels:
                    for t in targets:
                        url = f"http://{HOST}:{t.port}{args.path}"
                        r = one_round(t.pids, url, c, args.duration, tmp)
                        results.setdefault((t.name, c), []).append(r)
                        print(
                            f"  c={c:<3} {t.name:<16} {r['rps']:7.0f} req/s"
                            f"  cores {r['cores']:.2f}  errors {r['errors']}",
                            flush=True,
                        )
    except KeyboardInterrupt:
        return 130
    finally:
        stop_all()
    print(
        f"\nload average at the end {os.getloadavg()}; medians of {args.rounds} rounds, "
        "per request\n"
    )
    head = "| pairing | c | req/s | cores | process | " + " | ".join(COLUMNS) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for (name, c), rows in results.items():
        rps = statistics.median(r["rps"] for r in rows)
        cores = statistics.median(r["cores"] for r in rows)
        for proc in ("gateway", "receiver"):
            med = median_row(rows, proc)
            cells = " | ".join(
                f"{med[col]:.0f}" if col == "cpu_us" else f"{med[col]:.2f}" for col in COLUMNS
            )
            print(f"| {name} | {c} | {rps:.0f} | {cores:.2f} | {proc} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
