"""Python work per TCP connection through the real cores, in memory and deterministic.

A :class:`GatewayCore` and a :class:`ReceiverCore` (settings from the same config code the
CLIs use, auth and TLS off, one ``[[gateway.tcp]]`` listener for a service ``db``) are tied
back to back without sockets, as in ``bench/cpu_per_request.py``. Each of N connections is
opened on the gateway (``open_tcp``), crosses the tunnel, is "connected" by the receiver's
driver (``connected``), the service writes one byte on accept, the client reads it, then the
client closes, the service sees EOF and closes, and both sides forget the connection: the
whole life of a ``--setup-only`` connection of ``bench/tcp_iperf.py``, without event loops.

Reports, per connection and per side: Python function calls (cProfile total calls / N,
deterministic) and CPU time (``time.process_time``, unprofiled run, noisy).

    python bench/tcp_setup_calls.py [-n 2000] [--top 25]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from anpx_core.gateway import GatewayCore  # noqa: E402
from anpx_core.gateway.tcp import TcpListen  # noqa: E402
from anpx_core.receiver import ReceiverCore  # noqa: E402
from anpx_host.config import parse_config, to_gateway_settings, to_receiver_settings  # noqa: E402

TICK = 0.0001
WARMUP = 100
LISTEN = TcpListen(0, "db", "127.0.0.1")


class Tunnel:
    """A gateway and a receiver core back to back; TCP connections pumped by hand."""

    def __init__(self) -> None:
        cfg = parse_config(
            {
                "receiver": {
                    "gateway_url": "ws://127.0.0.1:8765/",
                    "tcp": [{"name": "db", "local": "127.0.0.1:5432"}],
                },
            }
        )
        gs = to_gateway_settings(cfg)
        gs.tcp.listeners = [LISTEN]
        self.gw = GatewayCore(gs)
        self.rx = ReceiverCore(to_receiver_settings(cfg))
        self.now = 1000.0
        self.to_rx = b""
        self.to_gw = b""
        # TCP connections each side's driver pumps: cid -> state
        self.public: dict[int, dict] = {}
        self.service: dict[int, dict] = {}
        self.connecting: list[int] = []
        self.got = 0
        self.rx.start(self.now, time.time())
        (request,) = self.rx.pop_connects()
        self.link = request.cid
        self.tunnel = self.gw.open_tunnel(self.now, ("127.0.0.1", 50000))
        self.rx.connected(self.link, self.now)
        self._rx_sync()
        for _ in range(50):
            self.gw_step()
            self.rx_step()
            if self.gw.receivers:
                break
        assert self.gw.receivers, "the receiver did not connect"

    # --- the gateway's driver ---

    def _gw_sync(self) -> None:
        self.gw.pop_wakeups()
        for cid in self.gw.pop_aborts():
            self.public.pop(cid, None)
            self.gw.closed(cid, self.now)

    def gw_step(self) -> None:
        gw, now = self.gw, self.now
        if self.to_gw:
            data, self.to_gw = self.to_gw, b""
            gw.receive(self.tunnel, data, now)
            self._gw_sync()
        data, _close = gw.take_output(self.tunnel)
        if data:
            self.to_rx += data
            gw.written(self.tunnel, now)
            self._gw_sync()
        for cid, st in list(self.public.items()):
            self._pump(gw, self._gw_sync, self.public, cid, st, client=True)

    # --- the receiver's driver ---

    def _rx_sync(self) -> None:
        rx = self.rx
        rx.pop_wakeups()
        for cid in rx.pop_aborts():
            self.service.pop(cid, None)
            rx.closed(cid, self.now)
        # the connect completes later, as a driver's connect does: after this step's writes
        self.connecting += [r.cid for r in rx.pop_connects() if r.purpose == "tcp"]

    def _rx_connected(self) -> None:
        connecting, self.connecting = self.connecting, []
        for cid in connecting:
            self.rx.connected(cid, self.now)
            # the service writes one byte on accept, reads to EOF, then closes
            self.service[cid] = {"out": b"x", "eof_in": False, "eof_out": False}
            self._rx_sync()

    def rx_step(self) -> None:
        rx, now = self.rx, self.now
        self._rx_connected()
        if self.to_rx:
            data, self.to_rx = self.to_rx, b""
            rx.receive(self.link, data, now)
            self._rx_sync()
        data, _close = rx.take_output(self.link)
        if data:
            self.to_gw += data
            rx.written(self.link, now)
            self._rx_sync()
        for cid, st in list(self.service.items()):
            self._pump(rx, self._rx_sync, self.service, cid, st, client=False)

    def _pump(self, core, sync: Callable[[], None], conns: dict, cid: int, st: dict,
              client: bool) -> None:  # fmt: skip
        """One connection's socket: its peer's bytes/EOF in, the core's bytes/close out."""
        now = self.now
        if st["out"]:
            data, st["out"] = st["out"], b""
            core.receive(cid, data, now)
            sync()
        if st.get("close_in") and not st["eof_in"]:
            st["eof_in"] = True
            core.receive(cid, b"", now)  # the peer half-closed
            sync()
        if cid not in conns:
            return
        data, close = core.take_output(cid)
        if data:
            if client:
                self.got += len(data)
                st["close_in"] = True  # the client got its byte: it closes
            core.written(cid, now)
            sync()
        elif close and not st["eof_out"]:
            st["eof_out"] = True  # shutdown(SHUT_WR): the peer reads EOF
            if not client:
                st["close_in"] = True  # the service read EOF: it closes too
        if st["eof_in"] and st["eof_out"]:
            del conns[cid]
            core.closed(cid, now)
            sync()

    # --- one connection ---

    def one(self, gw_run: Callable[[Callable[[], None]], None], rx_run: Callable) -> None:
        self.now += TICK
        got = self.got
        gw_run(self._open)
        for _ in range(40):
            gw_run(self.gw_step)
            rx_run(self.rx_step)
            if not (self.public or self.service or self.connecting or self.to_gw or self.to_rx):
                break
        else:
            raise RuntimeError("the connection did not finish")
        assert self.got == got + 1, "the client did not get its byte"

    def _open(self) -> None:
        cid = self.gw.open_tcp(self.now, ("127.0.0.1", 40000), LISTEN)
        self.public[cid] = {"out": b"", "eof_in": False, "eof_out": False}
        self._gw_sync()


def _plain(fn: Callable[[], None]) -> None:
    fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="connections measured")
    parser.add_argument("--top", type=int, default=0, help="print each side's top functions")
    args = parser.parse_args()
    n = args.n

    # CPU time, unprofiled
    t = Tunnel()
    for _ in range(WARMUP):
        t.one(_plain, _plain)
    spent = {"gateway": 0.0, "receiver": 0.0}

    def timed(side: str) -> Callable[[Callable[[], None]], None]:
        def run(fn: Callable[[], None]) -> None:
            t0 = time.process_time()
            fn()
            spent[side] += time.process_time() - t0

        return run

    gw_t, rx_t = timed("gateway"), timed("receiver")
    for _ in range(n):
        t.one(gw_t, rx_t)

    # calls, profiled: one profiler per side, enabled only inside that side's steps
    t = Tunnel()
    for _ in range(WARMUP):
        t.one(_plain, _plain)
    profs = {"gateway": cProfile.Profile(), "receiver": cProfile.Profile()}

    def profiled(side: str) -> Callable[[Callable[[], None]], None]:
        prof = profs[side]

        def run(fn: Callable[[], None]) -> None:
            prof.enable()
            fn()
            prof.disable()

        return run

    gw_p, rx_p = profiled("gateway"), profiled("receiver")
    for _ in range(n):
        t.one(gw_p, rx_p)

    print(f"{n} TCP connections (open, 1 byte service -> client, close), per connection:")
    for side, prof in profs.items():
        stats = pstats.Stats(prof)
        calls = stats.total_calls  # type: ignore[attr-defined]
        print(f"  {side:8}  {calls / n:7.0f} Python calls   {spent[side] / n * 1e6:6.0f} µs CPU")
        if args.top:
            stats.sort_stats("cumtime").print_stats(args.top)


if __name__ == "__main__":
    main()
