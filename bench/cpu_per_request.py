"""CPU per small request through the real cores, in memory and deterministic.

A :class:`GatewayCore` and a :class:`ReceiverCore` (settings from the same config code the
CLIs use, auth and TLS off) are tied back to back without sockets: one core's
``take_output`` is fed to the other's ``receive``. An HTTP client's raw request bytes go
into the gateway's client connection; the receiver runs ``bench/app.py`` (the app every
benchmark calls) synchronously for each call, as the drivers' ``serve_http_call`` would.
Next to it, a direct baseline: an ``h11.Connection`` server answering the same requests the
way uvicorn's h11 protocol does (scope, app, Response with Date/Server, Data, EndOfMessage,
next cycle), also without sockets, so the ratio excludes the event loops on both sides.

Meters (the work is the same in each; only the measuring differs):

* default: ``time.process_time`` per side (noisy on a loaded machine);
* ``--callgrind``: re-runs itself under ``valgrind --tool=callgrind`` with collection on only
  inside the measured steps (each side's step runs inside its own C entry point:
  ``functools.reduce`` for the gateway, ``itertools.starmap`` for the receiver,
  ``operator.methodcaller`` for the baseline)
  and prints instructions (Ir) per request: repeatable, whatever else the machine runs;
* ``--profile``: cProfile over the measured loop, top functions by own time.

    python bench/cpu_per_request.py [-n 2000] [--callgrind [-n 300]] [--profile]
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repository, not bench/ (whose profile.py would shadow the stdlib's), comes first.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import cProfile  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402
import operator  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from email.utils import formatdate  # noqa: E402
from typing import Any  # noqa: E402

import h11  # noqa: E402

from anpx_core.gateway import GatewayCore  # noqa: E402
from anpx_core.receiver import ReceiverCore  # noqa: E402
from anpx_host.config import parse_config, to_gateway_settings, to_receiver_settings  # noqa: E402
from bench.app import SMALL_BODY, app  # noqa: E402

# What wrk sends for a small GET, keep-alive.
REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
TICK = 0.0001  # fake seconds per request
WARMUP = 200

# Each side's measured step runs inside a distinct C function that nothing else calls (not
# imports either, unlike exec), so that callgrind can collect inside it alone
# (--toggle-collect): functools.reduce, itertools.starmap, operator.methodcaller.
_BASE_CALL = operator.methodcaller("serve")
MARKERS = {
    "gateway": "functools_reduce",
    "receiver": "starmap_next",
    "direct h11": "methodcaller_call",
}


def _run_sync(coro: Any) -> None:
    """Step an app coroutine that never waits (the small path answers at once)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the app suspended: not a small request")


class Tunnel:
    """A gateway and a receiver core wired back to back, one keep-alive client."""

    def __init__(self) -> None:
        cfg = parse_config({"receiver": {"gateway_url": "ws://127.0.0.1:8765/"}})
        self.gw = GatewayCore(to_gateway_settings(cfg))
        self.rx = ReceiverCore(to_receiver_settings(cfg))
        self.now = 1000.0
        self.to_rx = b""  # tunnel bytes gateway -> receiver, not yet delivered
        self.to_gw = b""  # tunnel bytes receiver -> gateway
        self.client_in = b""  # request bytes for the gateway's client connection
        self.response = bytearray()
        self.client: int | None = None
        self.rx.start(self.now, time.time())
        requests = self.rx.pop_connects()
        assert len(requests) == 1, requests
        self.link = requests[0].cid
        self.tunnel = self.gw.open_tunnel(self.now, ("127.0.0.1", 50000))
        self.rx.connected(self.link, self.now)
        self._rx_sync()
        for _ in range(50):
            self.gw_step()
            self.rx_step()
            if self.gw.receivers:
                break
        assert self.gw.receivers, "the receiver did not connect"
        self.client = self.gw.open_client(self.now, ("127.0.0.1", 40000), ("127.0.0.1", 8080))
        self.gw.pop_wakeups()

    # --- one side each: everything that side's driver would do with the bytes it has ---

    def gw_step(self) -> None:
        gw, now = self.gw, self.now
        if self.client_in:
            data, self.client_in = self.client_in, b""
            gw.receive(self.client, data, now)
            self._gw_sync()
        if self.to_gw:
            data, self.to_gw = self.to_gw, b""
            gw.receive(self.tunnel, data, now)
            self._gw_sync()
        data, _close = gw.take_output(self.tunnel)
        if data:
            self.to_rx += data
            gw.written(self.tunnel, now)
            self._gw_sync()
        data = gw.take_output(self.client)[0] if self.client is not None else b""
        if data:
            self.response += data
            gw.written(self.client, now)
            self._gw_sync()
        deadline = gw.next_deadline()
        if deadline is not None and deadline <= now:
            gw.handle_timer(now)
            self._gw_sync()

    def _gw_sync(self) -> None:
        self.gw.pop_wakeups()
        self.gw.pop_aborts()

    def rx_step(self) -> None:
        rx, now = self.rx, self.now
        if self.to_rx:
            data, self.to_rx = self.to_rx, b""
            rx.receive(self.link, data, now)
            self._rx_sync()
        if rx.heads_pending:
            rx.flush_heads()
            self._rx_sync()
        data, _close = rx.take_output(self.link)
        if data:
            self.to_gw += data
            rx.written(self.link, now)
            self._rx_sync()
        deadline = rx.next_deadline()
        if deadline is not None and deadline <= now:
            rx.handle_timer(now)
            self._rx_sync()

    def _rx_sync(self) -> None:
        rx = self.rx
        rx.pop_wakeups()
        rx.pop_aborts()
        rx.pop_connects()
        for call_id, scope in rx.pop_app_calls():
            self._call(call_id, scope)

    def _call(self, call_id: int, scope: dict[str, Any]) -> None:
        """``serve_http_call`` without the event loop."""
        rx = self.rx

        async def receive() -> dict[str, Any]:
            message = rx.asgi_receive(call_id)
            rx.pop_wakeups()
            assert message is not None
            return message

        async def send(message: dict[str, Any]) -> None:
            rx.asgi_send(call_id, message, self.now)
            rx.pop_wakeups()
            assert rx.asgi_writable(call_id)

        _run_sync(app(scope, receive, send))
        rx.app_finished(call_id, None, self.now)
        rx.pop_wakeups()

    # --- requests ---

    def one(self, gw_run: Callable[[Callable[[], None]], None], rx_run: Callable) -> None:
        self.now += TICK
        self.client_in = REQUEST
        for _ in range(20):
            gw_run(self.gw_step)
            rx_run(self.rx_step)
            if self.response.endswith(SMALL_BODY) and not (self.to_gw or self.to_rx):
                break
        else:
            raise RuntimeError(f"no response: {bytes(self.response)!r}")
        assert self.response.startswith(b"HTTP/1.1 200 "), bytes(self.response)
        self.response.clear()


class DirectH11:
    """uvicorn's h11 protocol for one keep-alive connection, minus the event loop."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        self.out = bytearray()
        self.data = b""
        self.server = ("127.0.0.1", 8080)
        self.client = ("127.0.0.1", 40000)

    def serve(self) -> None:
        conn = self.conn
        conn.receive_data(self.data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._request(event)
            elif event is h11.PAUSED or isinstance(event, h11.EndOfMessage):
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    return

    def _request(self, event: h11.Request) -> None:
        raw_path, _, query = event.target.partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": event.http_version.decode("ascii"),
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": event.method.decode("ascii"),
            "root_path": "",
            "path": raw_path.decode("ascii"),
            "raw_path": raw_path,
            "query_string": query,
            "headers": [(k.lower(), v) for k, v in event.headers],
        }
        conn = self.conn

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (b"date", formatdate(usegmt=True).encode()),
                    (b"server", b"uvicorn"),
                    *message.get("headers", []),
                ]
                reason = h11._util.bytesify("OK")  # uvicorn: STATUS_PHRASES[status]
                response = h11.Response(
                    status_code=message["status"], headers=headers, reason=reason
                )
                self.out += conn.send(response)
            else:
                self.out += conn.send(h11.Data(data=message.get("body", b"")))
                if not message.get("more_body", False):
                    self.out += conn.send(h11.EndOfMessage())

        _run_sync(app(scope, receive, send))

    def one(self, run: Callable[[Any], None]) -> None:
        self.data = REQUEST
        run(self)
        assert self.out.startswith(b"HTTP/1.1 200 ") and self.out.endswith(SMALL_BODY)
        self.out.clear()


def _direct(step: Callable[[], None]) -> None:
    step()


def _apply(_: None, step: Callable[[], None]) -> None:
    step()


def _via_reduce(step: Callable[[], None]) -> None:
    functools.reduce(_apply, (step,), None)


def _via_starmap(step: Callable[[], None]) -> None:
    next(itertools.starmap(step, ((),)))


def measure(n: int, meter: str) -> dict[str, float]:
    """Per-request cost by side; ``meter`` = ``time`` (µs) or ``marked`` (callgrind's job)."""
    tunnel, direct = Tunnel(), DirectH11()
    for _ in range(WARMUP):
        tunnel.one(_direct, _direct)
        direct.one(DirectH11.serve)
    if meter == "marked":
        for _ in range(n):
            tunnel.one(_via_reduce, _via_starmap)
        for _ in range(n):
            direct.one(_BASE_CALL)
        return {}
    spent = {"gateway": 0.0, "receiver": 0.0}
    clock = time.process_time

    def timed(side: str) -> Callable[[Callable[[], None]], None]:
        def run(step: Callable[[], None]) -> None:
            start = clock()
            step()
            spent[side] += clock() - start

        return run

    gw_run, rx_run = timed("gateway"), timed("receiver")
    for _ in range(n):
        tunnel.one(gw_run, rx_run)
    start = clock()
    for _ in range(n):
        direct.one(DirectH11.serve)
    spent["direct h11"] = clock() - start
    return {side: seconds / n * 1e6 for side, seconds in spent.items()}


def profile(n: int, top: int) -> None:
    tunnel = Tunnel()
    for _ in range(WARMUP):
        tunnel.one(_direct, _direct)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        tunnel.one(_direct, _direct)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(
        f"cProfile, {n} requests gateway+receiver: {total / n * 1e6:.0f} µs/req under the profiler"
    )
    stats.sort_stats("tottime").print_stats(top)


def callgrind(n: int) -> dict[str, float]:
    """Re-run under callgrind; instructions per request for each marked step."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        argv += ["--collect-atstart=no"]
        argv += [f"--toggle-collect={fn}" for fn in MARKERS.values()]
        argv += [sys.executable, __file__, "--marked", "-n", str(n)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # pymalloc, as in production
        subprocess.run(argv, check=True, env=env, stderr=subprocess.DEVNULL)
        annotate = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    result = {}
    for side, fn in MARKERS.items():
        match = re.search(rf"^\s*([\d,]+) .*:{fn} ", annotate, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {fn} in callgrind's output")
        result[side] = int(match.group(1).replace(",", "")) / n
    return result


def report(figures: dict[str, float], unit: str) -> None:
    tunnel = figures["gateway"] + figures["receiver"]
    base = figures["direct h11"]
    fmt = "{:>12,.0f}" if unit == "Ir" else "{:>12,.1f}"
    for side in ("gateway", "receiver"):
        print(f"{side:<22}" + fmt.format(figures[side]) + f" {unit}/req")
    print(f"{'gateway + receiver':<22}" + fmt.format(tunnel) + f" {unit}/req")
    print(f"{'direct h11 (uvicorn)':<22}" + fmt.format(base) + f" {unit}/req")
    print(f"ratio (gateway + receiver) / direct h11: {tunnel / base:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=None, help="measured requests")
    parser.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    parser.add_argument("--profile", action="store_true", help="cProfile, top functions")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--marked", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.marked:
        measure(args.n, "marked")
    elif args.callgrind:
        n = args.n or 300
        print(f"callgrind, {n} requests (after {WARMUP} unmeasured)")
        report(callgrind(n), "Ir")
    elif args.profile:
        profile(args.n or 2000, args.top)
    else:
        n = args.n or 2000
        print(f"process_time, {n} requests (after {WARMUP} unmeasured)")
        report(measure(n, "time"), "µs")


if __name__ == "__main__":
    main()
