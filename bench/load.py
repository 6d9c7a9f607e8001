"""Closed-loop HTTP load: ``wrk`` when installed, else a Python fallback with the same output.

Both keep ``connections`` keep-alive connections busy for ``duration`` seconds, each sending
its next request as soon as the previous response is complete, and report the request count
and latency percentiles measured by the generator itself.

The fallback (``python bench/load.py URL -c 16 -d 5``) is an asyncio client on raw sockets.
It spends more CPU per request than ``wrk`` (taken from the servers on a small machine) and
its latencies include its own event loop's delays, so its figures are not comparable with
wrk's; results say which generator produced them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LUA = Path(__file__).with_name("wrk_report.lua")


@dataclass
class LoadResult:
    generator: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # connect/read/write/timeout errors and non-2xx/3xx answers
    non_2xx: int = 0  # of which answers with another status (e.g. 503 at a stream limit)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(url: str, connections: int, duration: float, generator: str = "auto") -> LoadResult:
    if generator == "auto":
        generator = "wrk" if have_wrk() else "python"
    if generator == "wrk":
        return _run_wrk(url, connections, duration)
    return _run_python(url, connections, duration)


def _run_wrk(url: str, connections: int, duration: float) -> LoadResult:
    # One wrk thread: on a small machine a second thread only takes a core from the server.
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s"]
    argv += ["--timeout", "10s", "-s", str(LUA), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        "wrk",
        connections,
        data["requests"],
        data["duration_us"] / 1e6,
        data["p50_us"] / 1000,
        data["p90_us"] / 1000,
        data["p99_us"] / 1000,
        errors,
        data["status"],
    )


def _run_python(url: str, connections: int, duration: float) -> LoadResult:
    argv = [sys.executable, __file__, url, "-c", str(connections), "-d", str(duration)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return LoadResult("python", connections, **data)


# --- the fallback generator (runs in its own process) -------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _connection(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    latencies: list[float],
    non_2xx: list[int],
) -> int:
    """Requests on one keep-alive connection until ``deadline``; returns the error count."""
    errors = 0
    clock = time.perf_counter
    while clock() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while clock() < deadline:
                start = clock()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length, close = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                await reader.readexactly(length)
                latencies.append(clock() - start)
                if head[9:10] not in (b"2", b"3"):
                    errors += 1
                    non_2xx[0] += 1
                if close:
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            errors += 1
        finally:
            writer.close()
    return errors


async def _python_load(url: str, connections: int, duration: float) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    non_2xx = [0]
    start = time.perf_counter()
    deadline = start + duration
    errors = await asyncio.gather(
        *(
            _connection(host, port, request, deadline, latencies, non_2xx)
            for _ in range(connections)
        )
    )
    seconds = time.perf_counter() - start
    latencies.sort()
    return {
        "connections": connections,
        "requests": len(latencies),
        "seconds": seconds,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p90_ms": _percentile(latencies, 0.90) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "errors": sum(errors),
        "non_2xx": non_2xx[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop HTTP GET load (wrk fallback)")
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    args = parser.parse_args()
    result = asyncio.run(_python_load(args.url, args.connections, args.duration))
    result.pop("connections")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
