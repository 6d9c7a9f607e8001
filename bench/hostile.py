"""Gateway memory and health under hostile HTTP clients (docs/security.md, "Hostile HTTP clients").

Starts real gateway + receiver processes (``bench/procs.py``) and, for each driver, runs:

* ``never-read``: one connection pipelines ``--requests`` x ``GET /download?size=1000000`` and
  never reads; after ``--seconds`` the gateway's RSS growth (peak minus idle) is printed;
* ``head``: ``--connections`` connections each send ``HEAD /download?size=5000000`` and a
  pipelined GET, then close; printed: the statuses of normal requests made afterwards (200
  expected; 503 "all receivers are busy" when the streams of the clients that left leak).

    python bench/hostile.py
    python bench/hostile.py --drivers trio --requests 400 --seconds 12 --max-output-bytes 1048576

A measurement, not a test: nothing is asserted. Results of a run go in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import HOST, MemWatch, proc_status, start_tunnel

MiB = 1024 * 1024


def never_read(port: int, requests: int, seconds: float) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect((HOST, port))
    request = f"GET /download?size=1000000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    sock.sendall(request * requests)
    time.sleep(seconds)  # the load: the client sits there, reading nothing
    sock.close()


def head_then_leave(port: int, connections: int) -> None:
    for _ in range(connections):
        with socket.create_connection((HOST, port)) as sock:
            sock.sendall(
                f"HEAD /download?size=5000000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
                f"GET /download?size=5000000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
            )


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", nargs="+", default=["trio", "asyncio"])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--max-output-bytes", type=int, default=None)
    args = parser.parse_args()
    keys = {}
    if args.max_output_bytes is not None:
        keys["max_output_bytes"] = args.max_output_bytes
    with tempfile.TemporaryDirectory() as tmp:
        for driver in args.drivers:
            target = start_tunnel(driver, driver, Path(tmp), gateway_keys=keys)
            try:
                url = f"http://{HOST}:{target.port}/small"
                watch = MemWatch({"gateway": target.pids["gateway"]})
                watch.start()
                never_read(target.port, args.requests, args.seconds)
                watch.finish()
                growth = watch.growth()["gateway"] / MiB
                head_then_leave(target.port, args.connections)
                time.sleep(2)  # let the gateway notice the clients left
                statuses = [status_of(url) for _ in range(5)]
                rss = proc_status(target.pids["gateway"])["VmRSS"] / MiB
                print(
                    json.dumps(
                        {
                            "driver": driver,
                            "never_read_rss_growth_mib": round(growth, 1),
                            "peak_reset": watch.reset,
                            "after_head_statuses": statuses,
                            "rss_end_mib": round(rss, 1),
                        }
                    )
                )
            finally:
                target.stop()


if __name__ == "__main__":
    main()
