"""Hostile tunnel peers and exposed listeners (issue 12: cases 4 and 8, the admin listener).

Over real loopback sockets on both drivers, with independent peers (``websockets``, raw
sockets with wsproto) playing a receiver against our gateway or a gateway against our
receiver; timing rules (attempt windows, ping windows) in fake time on the sans-IO cores.
docs/security.md ("Hostile tunnel peers and exposure") maps each attack to its test here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Ping, Pong, Request, TextMessage

from anpx_core import frames as F
from anpx_core import messages as M
from anpx_core.auth import SharedSecretClient, SharedSecretServer
from anpx_core.gateway import GatewayCore, GatewaySettings
from anpx_core.meta import RequestHead, ResponseHead, encode_response_meta
from anpx_core.receiver import ReceiverSettings
from anpx_core.websocket import Closed, WsLimits, WsServer
from anpx_host.config import ConfigError, parse_config
from anpx_host.launch import ADMIN_TOKEN_ENV, make_plan

from .apps import app
from .deploy import DRIVERS, start_gateway, start_receiver, wait_until
from .test_auth import SECRET, raw_upgrade

MiB = 1024 * 1024
NOW = 1_800_000_000.0


# --- case 4: strangers cannot lock receivers out -------------------------------------------


def _signed(port: int) -> list[tuple[str, str]]:
    return SharedSecretClient(SECRET, "rc", nonce_source=os.urandom).request_headers(
        f"127.0.0.1:{port}", "/", time.time()
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_bad_upgrades_do_not_lock_out_a_signing_receiver(driver):
    gateway = start_gateway(driver, GatewaySettings(auth=SharedSecretServer(SECRET)))
    ports = gateway.obj.ports
    try:
        # strangers on the receivers' address (behind nginx everyone is 127.0.0.1)
        statuses = [raw_upgrade(ports.tunnel, []) for _ in range(10)]
        assert statuses == [401] * 3 + [429] * 7  # max_attempts = 3, then 429
        receiver = start_receiver(
            driver,
            ReceiverSettings(
                gateway_urls=[f"ws://127.0.0.1:{ports.tunnel}/"],
                auth=SharedSecretClient(SECRET, "rc-ok", nonce_source=os.urandom),
            ),
            app,
        )
        try:
            wait_until(lambda: len(gateway.obj.core.receivers) == 1)
            assert httpx.get(f"http://127.0.0.1:{ports.http}/echo").status_code == 200
            assert raw_upgrade(ports.tunnel, []) == 429  # failures still are limited
        finally:
            receiver.stop()
    finally:
        gateway.stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_failure_limit_keys_on_the_client_a_trusted_proxy_reports(driver):
    import ipaddress

    settings = GatewaySettings(
        auth=SharedSecretServer(SECRET, max_attempts=2),
        trusted_proxies=[ipaddress.ip_network("127.0.0.1/32")],
    )
    gateway = start_gateway(driver, settings)
    port = gateway.obj.ports.tunnel
    try:
        # The attacker rotates what it claims; the proxy appends the address it really saw.
        rotating = [
            raw_upgrade(port, [("X-Forwarded-For", f"198.51.100.{i}, 203.0.113.7")])
            for i in range(4)
        ]
        assert rotating == [401, 401, 429, 429]
        assert raw_upgrade(port, [("X-Forwarded-For", "203.0.113.8")]) == 401  # someone else
        # a hop that is not an address did not come from a proxy: counted on the proxy itself
        garbage = [raw_upgrade(port, [("X-Forwarded-For", f"host-{i}")]) for i in range(3)]
        assert garbage == [401, 401, 429]
        # the blocked client, signing correctly, is admitted
        signed = [*_signed(port), ("X-Forwarded-For", "203.0.113.7")]
        assert raw_upgrade(port, signed) == 101
    finally:
        gateway.stop()


def test_failure_window_in_fake_time_and_bounded_memory():
    server = SharedSecretServer(SECRET, max_attempts=2, max_tracked=100)
    host, path = "gw.example:8765", "/tunnel"
    for i in range(1000):  # many addresses: at most max_tracked counters are kept
        server.check_request(host, path, [], f"10.1.{i // 256}.{i % 256}:1", NOW)
    assert server.tracked_addresses == 100
    # IPv6 by /64, ports ignored: one host cannot pick a fresh address per attempt
    peers = ["[2001:db8::1]:443", "2001:db8::2", "[2001:db8::ffff]:1"]
    assert [server.check_request(host, path, [], p, NOW).status for p in peers] == [401, 401, 429]
    late = server.check_request(host, path, [], "2001:db8::3", NOW + 59.999)
    assert late.status == 429 and ("retry-after", "1") in late.headers
    # the window is a minute: at 60 s the count starts again, and old counters are dropped
    assert server.check_request(host, path, [], "2001:db8::3", NOW + 60).status == 401
    assert server.tracked_addresses == 1


def test_a_signed_handshake_is_still_checked_for_skew_and_replay():
    server = SharedSecretServer(SECRET, max_attempts=1)
    client = SharedSecretClient(SECRET, "rc", nonce_source=os.urandom)
    headers = client.request_headers("h", "/", NOW)
    assert server.check_request("h", "/", headers, "10.0.0.1", NOW).ok
    assert server.check_request("h", "/", headers, "10.0.0.1", NOW).status == 401  # replay
    assert server.check_request("h", "/", headers, "10.0.0.1", NOW).status == 429
    skewed = client.request_headers("h", "/", NOW - 301)
    assert not server.check_request("h", "/", skewed, "10.0.0.2", NOW).ok
    # strict digits: "²" passes str.isdigit() but must not reach int()
    odd = [(n, "²" if n == "anpx-auth-timestamp" else v) for n, v in headers]
    assert server.check_request("h", "/", odd, "10.0.0.3", NOW).status == 401


# --- case 8a: body held before heads --------------------------------------------------------


def _chunk(kind: int, rid: str, idx: int, body: bytes = b"", meta: bytes | None = None) -> bytes:
    tlvs = [(F.TAG_REQUEST_ID, rid.encode()), (F.TAG_CHUNK_IDX, idx.to_bytes(4, "big"))]
    if meta is not None:
        tag = F.TAG_RESP_META if kind == F.TYPE_RESPONSE else F.TAG_HTTP_META
        tlvs.append((tag, meta))
    if body:
        tlvs.append((F.TAG_HTTP_BODY, body))
    if meta is not None:
        tlvs.append((F.TAG_FINAL_CHUNK, b"\x01"))
    return F.encode_frame(kind, F.FLAG_CHUNKED, tlvs)


def test_headless_total_edge_in_the_decoder():
    decoder = M.MessageDecoder(M.Limits(max_headless_total=100, max_headless_body=80))
    decoder.receive_bytes(_chunk(F.TYPE_RESPONSE, "a", 0, b"x" * 60))
    decoder.receive_bytes(_chunk(F.TYPE_RESPONSE, "b", 0, b"y" * 40))  # exactly 100: held
    assert decoder.headless_bytes == 100
    with pytest.raises(M.ProtocolError) as caught:
        decoder.receive_bytes(_chunk(F.TYPE_RESPONSE, "c", 0, b"z"))
    assert caught.value.request_id == "c" and caught.value.code == "too_large"
    with pytest.raises(M.ProtocolError):  # per message, too
        decoder.receive_bytes(_chunk(F.TYPE_RESPONSE, "a", 1, b"x" * 21))
    assert decoder.headless_bytes == 40  # "a" was dropped with its bytes
    meta = encode_response_meta(ResponseHead(200, "OK", []))
    events = decoder.receive_bytes(_chunk(F.TYPE_RESPONSE, "b", 1, b"", meta))
    assert [type(e).__name__ for e in events] == ["HeadReceived", "BodyReceived", "MessageComplete"]
    assert decoder.headless_bytes == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_receiver_holding_body_before_heads_is_capped_per_tunnel(driver):
    settings = GatewaySettings(codec=M.Limits(max_headless_total=3 * MiB))
    gateway = start_gateway(driver, settings)
    ports = gateway.obj.ports
    results: dict[str, httpx.Response] = {}

    def get(path: str) -> None:
        results[path] = httpx.get(f"http://127.0.0.1:{ports.http}{path}", timeout=20)

    try:
        with connect(f"ws://127.0.0.1:{ports.tunnel}/", max_size=None) as ws:
            wait_until(lambda: len(gateway.obj.core.receivers) == 1)
            clients = [threading.Thread(target=get, args=(p,)) for p in ("/a", "/b", "/c")]
            for t in clients:
                t.start()
            ids: dict[str, str] = {}
            decoder = M.MessageDecoder()
            while len(ids) < 3:
                message = ws.recv(timeout=10)
                if isinstance(message, bytes):
                    for ev in decoder.receive_bytes(message):
                        if isinstance(ev, M.HeadReceived):
                            assert isinstance(ev.head, RequestHead)
                            ids[ev.head.target] = ev.request_id
            a, b, c = ids["/a"], ids["/b"], ids["/c"]
            resp = F.TYPE_RESPONSE
            ws.send(_chunk(resp, a, 0, b"a" * MiB))
            ws.send(_chunk(resp, a, 1, b"a" * MiB))
            ws.send(_chunk(resp, b, 0, b"b" * MiB))  # 3 MiB held in all: the limit, allowed
            ws.send(_chunk(resp, c, 0, b"c"))  # one byte over: this stream is reset
            clients[2].join(10)
            assert results["/c"].status_code == 502
            meta = encode_response_meta(ResponseHead(200, "OK", []))
            ws.send(_chunk(resp, a, 2, b"!", meta))
            ws.send(_chunk(resp, b, 1, b"!", meta))
            for t in clients:
                t.join(10)
            assert results["/a"].status_code == 200 and len(results["/a"].content) == 2 * MiB + 1
            assert results["/b"].status_code == 200 and results["/b"].content == b"b" * MiB + b"!"
            assert len(gateway.obj.core.receivers) == 1  # the tunnel serves on
    finally:
        gateway.stop()


def _hostile_gateway(handler):
    """A websockets server in a thread playing the gateway: (port, stop)."""
    server = serve(handler, "127.0.0.1", 0, max_size=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(5)

    return server.socket.getsockname()[1], stop


def _frames_from(ws, decoder: M.MessageDecoder, until) -> list[M.Event]:
    seen: list[M.Event] = []
    while not any(until(e) for e in seen):
        message = ws.recv(timeout=10)
        if isinstance(message, bytes):
            seen += decoder.receive_bytes(message)
    return seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_gateway_holding_body_before_heads_is_capped_per_tunnel(driver):
    outcome: dict = {}
    done = threading.Event()

    def handler(ws) -> None:
        if done.is_set():
            return
        try:
            ws.send(_chunk(F.TYPE_REQUEST, "hold", 0, b"h" * (MiB + 1)))  # 1 byte over
            decoder = M.MessageDecoder()
            events = _frames_from(ws, decoder, lambda e: isinstance(e, M.ErrorReceived))
            outcome["reset"] = [e.request_id for e in events if isinstance(e, M.ErrorReceived)]
            for frame in M.encode_message(M.Request("ok", "GET", "/echo", [("host", "x")])):
                ws.send(frame)
            events = _frames_from(ws, decoder, lambda e: isinstance(e, M.MessageComplete))
            heads = [e.head for e in events if isinstance(e, M.HeadReceived)]
            outcome["status"] = heads[0].status
        finally:
            done.set()

    port, stop = _hostile_gateway(handler)
    receiver = start_receiver(
        driver,
        ReceiverSettings(
            gateway_urls=[f"ws://127.0.0.1:{port}/"],
            codec=M.Limits(max_headless_total=MiB),
            reconnect_delay=5,
        ),
        app,
    )
    try:
        assert done.wait(20)
        assert outcome == {"reset": ["hold"], "status": 200}
    finally:
        receiver.stop()
        stop()


# --- case 8b: ping floods ---------------------------------------------------------------------


def _open_pair(limits: WsLimits) -> tuple[WsServer, WSConnection]:
    """Our server end and a wsproto client end, the handshake done, at fake time 0."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WsServer(limits, 0.0)
    server.receive_data(client.send(Request(host="h", target="/")), 0.0)
    server.accept()
    client.receive_data(server.data_to_send())
    server.sent()
    assert isinstance(next(client.events()), AcceptConnection)
    return server, client


def test_ping_rate_and_pong_coalescing_in_fake_time():
    limits = WsLimits(max_pings_per_minute=3, ping_interval=0)
    server, client = _open_pair(limits)
    # three pings never answered (no data_to_send between): one pong is queued, the latest
    for i in range(3):
        server.receive_data(client.send(Ping(payload=bytes([i]))), float(i))
    client.receive_data(server.data_to_send())
    assert [e.payload for e in client.events() if isinstance(e, Pong)] == [b"\x02"]
    # a fourth within the minute closes with 1008
    events = server.receive_data(client.send(Ping(payload=b"4")), 59.9)
    assert [(e.code, e.clean) for e in events if isinstance(e, Closed)] == [(1008, False)]
    # three a minute, for two minutes: fine (the count starts again each minute)
    server, client = _open_pair(limits)
    for t in (0.0, 1.0, 2.0, 60.0, 61.0, 62.0):
        events = server.receive_data(client.send(Ping(payload=b"p")), t)
        assert not [e for e in events if isinstance(e, Closed)]


def test_json_pings_echo_numbers_only_and_backlog_edge():
    server, client = _open_pair(WsLimits(max_pings_per_minute=0, ping_interval=0, max_backlog=1000))
    big = json.dumps({"type": "ping", "timestamp": "t" * 100_000})
    server.receive_data(client.send(TextMessage(data=big)), 1.0)
    pong = server.data_to_send()
    assert len(pong) < 100 and b'"timestamp": null' in pong
    assert server.backlog == len(pong) and not server.over_backlog  # taken, not yet written
    server.sent()
    assert server.backlog == 0
    server.send_binary(b"x" * (1000 - 4))  # 4 bytes of frame header: exactly the limit
    assert server.backlog == 1000 and not server.over_backlog
    server.send_control({"type": "x"})
    assert server.over_backlog
    taken = server.data_to_send()
    assert server.over_backlog and server.backlog == len(taken)  # the driver is writing it
    server.sent()
    assert not server.over_backlog


def _raw_tunnel(port: int, rcvbuf: int | None = None) -> tuple[socket.socket, WSConnection]:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target="/")))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(sock.recv(65536))
    return sock, ws


@pytest.mark.parametrize("driver", DRIVERS)
def test_ping_flood_closes_the_tunnel_with_1008(driver):
    gateway = start_gateway(driver, GatewaySettings(ws=WsLimits(max_pings_per_minute=5)))
    try:
        with connect(f"ws://127.0.0.1:{gateway.obj.ports.tunnel}/") as ws:
            for i in range(5):  # within the limit: each is answered
                assert ws.ping(str(i)).wait(5)
            ws.ping("one too many")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    finally:
        gateway.stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_receiver_closes_a_ping_flooding_gateway_with_1008(driver):
    codes: list[int] = []
    done = threading.Event()

    def handler(ws) -> None:
        if done.is_set():
            return
        try:
            for i in range(4):
                ws.ping(str(i))
            while True:
                ws.recv(timeout=10)
        except ConnectionClosed as exc:
            codes.append(exc.rcvd.code if exc.rcvd else 0)
        finally:
            done.set()

    port, stop = _hostile_gateway(handler)
    settings = ReceiverSettings(
        gateway_urls=[f"ws://127.0.0.1:{port}/"],
        ws=WsLimits(max_pings_per_minute=3),
        reconnect_delay=5,
    )
    receiver = start_receiver(driver, settings, app)
    try:
        assert done.wait(20)
        assert codes == [1008]
    finally:
        receiver.stop()
        stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_unread_pongs_do_not_pile_up(driver):
    """A receiver floods pings and never reads: the gateway answers only the latest one."""
    settings = GatewaySettings(ws=WsLimits(max_pings_per_minute=0, ping_interval=0))
    gateway = start_gateway(driver, settings)
    sock, ws = _raw_tunnel(gateway.obj.ports.tunnel, rcvbuf=4096)
    try:
        pings = 50_000  # 6.5 MiB: more pongs than the kernel's socket buffers hold
        block = b"".join(ws.send(Ping(payload=b"p" * 125)) for _ in range(1000))
        for _ in range(pings // 1000):
            sock.sendall(block)
        sock.sendall(ws.send(Ping(payload=b"last")))
        pongs = 0
        sock.settimeout(10)
        while True:  # now read all the gateway owes us
            ws.receive_data(sock.recv(1 << 20))
            last = False
            for event in ws.events():
                if isinstance(event, Pong):
                    pongs += 1
                    last = event.payload == b"last"
            if last:
                break
        assert pongs < pings // 2  # without coalescing every ping is answered
        assert len(gateway.obj.core.receivers) == 1
    finally:
        sock.close()
        gateway.stop()


# --- exposure: the admin listener -------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_admin_endpoints_need_the_bearer_token(driver):
    gateway = start_gateway(driver, GatewaySettings(admin_token=b"s3cret-token"))
    base = f"http://127.0.0.1:{gateway.obj.ports.admin}"
    try:
        for path in ("/stats", "/metrics"):
            missing = httpx.get(base + path)
            assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith(
                "Bearer"
            )
            assert b"receivers" not in missing.content
            wrong = httpx.get(base + path, headers={"authorization": "Bearer s3cret-tokeX"})
            assert wrong.status_code == 401
            basic = httpx.get(base + path, headers={"authorization": "Basic s3cret-token"})
            assert basic.status_code == 401
            right = httpx.get(base + path, headers={"authorization": "Bearer s3cret-token"})
            assert right.status_code == 200
        assert httpx.get(base + "/health").status_code == 503  # open: no receiver yet
    finally:
        gateway.stop()


def test_admin_on_a_public_address_requires_a_token(monkeypatch, tmp_path):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    public = {"gateway": {"admin_host": "0.0.0.0"}}
    with pytest.raises(ConfigError) as refused:
        make_plan("gateway", parse_config(public))
    assert refused.value.path == "gateway.admin_token" and "admin_token" in str(refused.value)
    assert make_plan("gateway", parse_config({})).gateway.settings.admin_token is None  # loopback
    off = {"gateway": {"admin_host": "0.0.0.0", "admin_port": 0}}
    assert make_plan("gateway", parse_config(off)).gateway.admin is None
    inline = {"gateway": {"admin_host": "0.0.0.0", "admin_token": "t1"}}
    assert make_plan("gateway", parse_config(inline)).gateway.settings.admin_token == b"t1"
    token_file = tmp_path / "admin-token"
    token_file.write_text("t2\n")
    token_file.chmod(0o600)
    from_file = {"gateway": {"admin_host": "::", "admin_token_file": str(token_file)}}
    assert make_plan("gateway", parse_config(from_file)).gateway.settings.admin_token == b"t2"
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "t3")
    assert make_plan("gateway", parse_config(public)).gateway.settings.admin_token == b"t3"
    with pytest.raises(ConfigError, match="admin_token_file"):
        parse_config({"gateway": {"admin_token": "a", "admin_token_file": str(token_file)}})


def test_new_limits_come_from_the_config():
    from anpx_host.config import to_gateway_settings, to_receiver_settings

    cfg = parse_config(
        {
            "gateway": {
                "max_body_before_head": "8MB",
                "max_pings_per_minute": 7,
                "max_tunnel_backlog": "2MB",
            },
            "receiver": {"max_body_before_head": 1234, "max_pings_per_minute": 0},
        }
    )
    g, r = to_gateway_settings(cfg), to_receiver_settings(cfg)
    assert g.codec.max_headless_total == 8 * MiB and g.ws.max_pings_per_minute == 7
    assert g.ws.max_backlog == 2 * MiB
    assert r.codec.max_headless_total == 1234 and r.ws.max_pings_per_minute == 0
    with pytest.raises(ConfigError, match="max_pings_per_minute"):
        parse_config({"gateway": {"max_pings_per_minute": -1}})


def _reply_provoking_frames(count: int) -> list[bytes]:
    """Request frames sent to a gateway: each is refused with an ERROR frame (a reply)."""
    return [
        M.encode_message(M.Request(f"r{i}", "GET", "/", [("host", "h")]))[0] for i in range(count)
    ]


def test_gateway_stops_reading_a_tunnel_that_does_not_read_its_replies():
    core = GatewayCore(GatewaySettings(ws=WsLimits(max_backlog=4096, ping_interval=0)))
    cid = core.open_tunnel(0.0, ("127.0.0.1", 5000))
    client = WSConnection(ConnectionType.CLIENT)
    core.receive(cid, client.send(Request(host="h", target="/")), 0.0)
    client.receive_data(core.take_output(cid)[0])
    core.written(cid, 0.0)
    assert isinstance(next(client.events()), AcceptConnection)
    sent = 0
    for frame in _reply_provoking_frames(1000):
        if not core.can_read(cid):
            break
        core.receive(cid, client.send(BytesMessage(data=frame)), 0.1)
        sent += 1
    assert 10 < sent < 1000  # stopped once the unwritten ERROR frames passed 4096 bytes
    data, _ = core.take_output(cid)
    assert len(data) > 4096 and not core.can_read(cid)  # taken is not written
    core.pop_wakeups()
    core.written(cid, 0.2)
    assert core.can_read(cid) and cid in core.pop_wakeups()  # the reader is woken


# --- a tunnel peer that stops reading -----------------------------------------------------------


def _socket_held(local_port: int, peer_port: int) -> bool:
    """Does a process still hold the TCP socket 127.0.0.1:local_port <-> :peer_port open?
    (A socket closed with unsent data lingers in the kernel as an orphan, inode 0; a socket
    still open in a process has an inode.)"""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.split(":")[1], 16) == local_port
                and int(remote.split(":")[1], 16) == peer_port
                and inode != "0"
            ):
                return True
    return False


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_tunnel_peer_that_never_reads_is_dropped_at_its_keepalive_timeout(driver):
    """A receiver that stops reading while the gateway sends it a request body: the
    gateway's write blocks on a full socket. The keepalive timeout must still end the
    connection, not leave the socket, its tasks and its buffers pinned for ever."""
    limits = WsLimits(ping_interval=0.5, ping_timeout=0.5)
    gateway = start_gateway(driver, GatewaySettings(ws=limits))
    sock, _ws = _raw_tunnel(gateway.obj.ports.tunnel, rcvbuf=4096)
    http_port = gateway.obj.ports.http
    wait_until(lambda: len(gateway.obj.core.receivers) == 1)

    def upload() -> None:
        body = b"x" * (8 * MiB)  # more than the tunnel's socket buffers hold
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{http_port}/upload", content=body, timeout=15)

    client = threading.Thread(target=upload, daemon=True)
    client.start()
    try:
        tunnel_port, peer_port = gateway.obj.ports.tunnel, sock.getsockname()[1]
        assert _socket_held(tunnel_port, peer_port)
        wait_until(lambda: len(gateway.obj.core.receivers) == 0)  # the keepalive timed out
        wait_until(lambda: not _socket_held(tunnel_port, peer_port))  # and the socket is gone
    finally:
        sock.close()
        client.join(20)
        gateway.stop()


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_gateway_that_never_reads_is_dropped_at_the_receivers_keepalive_timeout(driver):
    """The mirror case: a gateway asks for a large download and then reads nothing (its
    WebSocket library stops reading once its queue is full). The receiver's keepalive
    must end the connection, not leave a write blocked on it for ever."""
    peer: dict = {}
    release = threading.Event()

    def handler(ws) -> None:
        if "port" in peer:
            return  # a reconnection: not part of this test
        peer["port"] = ws.remote_address[1]
        ws.send(
            M.encode_message(M.Request("r1", "GET", "/download?n=67108864", [("host", "h")]))[0]
        )
        release.wait(30)  # read nothing

    port, stop = _hostile_gateway(handler)
    settings = ReceiverSettings(
        gateway_urls=[f"ws://127.0.0.1:{port}/"],
        ws=WsLimits(ping_interval=0.5, ping_timeout=0.5),
        reconnect_delay=30,
    )
    receiver = start_receiver(driver, settings, app)
    try:
        wait_until(lambda: "port" in peer)
        assert _socket_held(peer["port"], port)
        wait_until(lambda: not _socket_held(peer["port"], port))
    finally:
        release.set()
        receiver.stop()
        stop()
