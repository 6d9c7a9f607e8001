"""Memory of a gateway or receiver under a hostile tunnel peer (issue 12, case 8).

Not a test: it starts the real program (``python -m anpx_trio|anpx_asyncio``) on 127.0.0.1,
plays the hostile peer from this process with plain sockets and the sans-IO WebSocket layer,
and prints the program's peak resident memory (``VmHWM``) before and after the attack.

    python bench/hostile_rss.py                       # every scenario, both drivers
    python bench/hostile_rss.py --driver trio --scenario headless

Scenarios:

* ``headless``: a receiver answers 20 requests with 31 MiB of body each, all before any
  response head (the v1 layout allows body ahead of a head in the last chunk);
* ``pings-gw``: a receiver floods the gateway with WebSocket pings and never reads;
* ``pings-rc``: a gateway floods its receiver with WebSocket and JSON pings and never reads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from anpx_core import frames as F  # noqa: E402
from anpx_core import messages as M  # noqa: E402
from anpx_core.websocket import (  # noqa: E402
    BinaryReceived,
    HandshakeAccepted,
    HandshakeRequested,
    WsClient,
    WsLimits,
    WsServer,
)

MiB = 1024 * 1024
NO_LIMITS = WsLimits(max_message_size=64 * MiB, ping_interval=0, max_pings_per_minute=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of ``pid`` in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values["VmHWM"], values["VmRSS"]


#: Extra config for the program under attack (``--no-ping-limit`` sets it).
CONFIG: str = ""


def start(driver: str, args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if CONFIG:
        path = log.with_suffix(".toml")
        path.write_text(CONFIG)
        args = ["-c", str(path), *args]
    return subprocess.Popen(
        [sys.executable, "-m", f"anpx_{driver}", *args],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def ws_connect(port: int) -> tuple[socket.socket, WsClient]:
    sock = socket.create_connection(("127.0.0.1", port))
    ws = WsClient(f"127.0.0.1:{port}", "/", NO_LIMITS, 0.0)
    sock.sendall(ws.data_to_send())
    while True:
        events = ws.receive_data(sock.recv(65536), 0.0)
        if any(isinstance(e, HandshakeAccepted) for e in events):
            return sock, ws


def request_ids(sock: socket.socket, ws: WsClient, count: int) -> list[str]:
    decoder, ids = M.MessageDecoder(), []
    while len(ids) < count:
        for event in ws.receive_data(sock.recv(65536), 0.0):
            if isinstance(event, BinaryReceived):
                for ev in decoder.receive_bytes(event.data):
                    if isinstance(ev, M.HeadReceived):
                        ids.append(ev.request_id)
    return ids


def headless_chunk(rid: str, idx: int, body: bytes) -> bytes:
    tlvs = [(F.TAG_REQUEST_ID, rid.encode()), (F.TAG_CHUNK_IDX, idx.to_bytes(4, "big"))]
    return F.encode_frame(F.TYPE_RESPONSE, F.FLAG_CHUNKED, [*tlvs, (F.TAG_HTTP_BODY, body)])


def scenario_headless(driver: str, workdir: Path, streams: int = 20, mib: int = 31) -> int:
    http, tunnel = free_port(), free_port()
    proc = start(
        driver,
        ["gateway", "--gateway-port", str(http), "--wss-port", str(tunnel), "--admin-port", "0"],
        workdir / "gateway.log",
    )
    clients: list[socket.socket] = []
    try:
        wait_port(tunnel)
        sock, ws = ws_connect(tunnel)
        time.sleep(0.3)
        before = peak_rss(proc.pid)
        for _ in range(streams):
            c = socket.create_connection(("127.0.0.1", http))
            c.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(c)
        ids = request_ids(sock, ws, streams)
        body = os.urandom(MiB - 256)
        for rid in ids:
            for idx in range(mib):
                ws.send_binary(headless_chunk(rid, idx, body))
                sock.sendall(ws.data_to_send())
        time.sleep(1.0)
        after = peak_rss(proc.pid)
        sock.close()
        return report("headless", driver, before, after)
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(10)


def ping_flood(sock: socket.socket, ws: WsClient | WsServer, seconds: float, json_too: bool):
    """Send pings for ``seconds`` without ever reading (until the peer closes)."""
    from wsproto.events import Ping, TextMessage

    block = b"".join(ws._ws.send(Ping(payload=b"p" * 125)) for _ in range(1000))
    if json_too:
        # v1 peers echo the timestamp: a big one made every pong as big as its ping
        ping = json.dumps({"type": "ping", "timestamp": "t" * 65536})
        block += b"".join(ws._ws.send(TextMessage(data=ping)) for _ in range(100))
    import select

    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    sent, view = 0, memoryview(block)
    while time.monotonic() < deadline:
        _, writable, _ = select.select([], [sock], [], 0.2)
        if not writable:
            continue  # the peer stopped reading us: good
        try:
            n = sock.send(view)
        except BlockingIOError:
            continue
        except OSError:
            print("  the peer closed the tunnel")
            break
        sent += n
        view = view[n:] or memoryview(block)
    return sent


def scenario_pings_gw(driver: str, workdir: Path, seconds: float = 8.0) -> int:
    http, tunnel = free_port(), free_port()
    proc = start(
        driver,
        ["gateway", "--gateway-port", str(http), "--wss-port", str(tunnel), "--admin-port", "0"],
        workdir / "gateway.log",
    )
    try:
        wait_port(tunnel)
        sock, ws = ws_connect(tunnel)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        time.sleep(0.3)
        before = peak_rss(proc.pid)
        sent = ping_flood(sock, ws, seconds, json_too=True)
        after = peak_rss(proc.pid)
        print(f"  sent {sent / MiB:.0f} MiB of pings")
        sock.close()
        return report("pings-gw", driver, before, after)
    finally:
        proc.terminate()
        proc.wait(10)


def scenario_pings_rc(driver: str, workdir: Path, seconds: float = 8.0) -> int:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    proc = start(
        driver,
        ["receiver", "--gateway-url", f"ws://127.0.0.1:{port}/"],
        workdir / "receiver.log",
    )
    try:
        listener.settimeout(15)
        sock, _ = listener.accept()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ws = WsServer(NO_LIMITS, 0.0)
        while True:
            events = ws.receive_data(sock.recv(65536), 0.0)
            if any(isinstance(e, HandshakeRequested) for e in events):
                break
        ws.accept()
        sock.sendall(ws.data_to_send())
        time.sleep(0.3)
        before = peak_rss(proc.pid)
        sent = ping_flood(sock, ws, seconds, json_too=True)
        after = peak_rss(proc.pid)
        print(f"  sent {sent / MiB:.0f} MiB of pings")
        sock.close()
        return report("pings-rc", driver, before, after)
    finally:
        listener.close()
        proc.terminate()
        proc.wait(10)


def report(name: str, driver: str, before: tuple[int, int], after: tuple[int, int]) -> int:
    grown = (after[0] - before[0]) / 1024
    print(
        f"{name:10s} {driver:8s} peak RSS {before[0] / 1024:7.1f} -> {after[0] / 1024:7.1f} MiB"
        f"  (+{grown:.1f} MiB)"
    )
    return int(grown)


SCENARIOS = {
    "headless": scenario_headless,
    "pings-gw": scenario_pings_gw,
    "pings-rc": scenario_pings_rc,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=("trio", "asyncio"), action="append")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument(
        "--no-ping-limit",
        action="store_true",
        help="max_pings_per_minute = 0: show that coalesced pongs alone bound memory",
    )
    args = parser.parse_args()
    if args.no_ping_limit:
        global CONFIG
        CONFIG = "[gateway]\nmax_pings_per_minute = 0\n[receiver]\nmax_pings_per_minute = 0\n"
    with tempfile.TemporaryDirectory(prefix="anpx-hostile-") as tmp:
        for driver in args.driver or ("trio", "asyncio"):
            for name in args.scenario or SCENARIOS:
                SCENARIOS[name](driver, Path(tmp))


if __name__ == "__main__":
    main()
