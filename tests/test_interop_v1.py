"""Live interop with the v1 reference implementation (anp-proxy 62776d6), both directions.

Four pairings, each over loopback with real processes on the reference's side:

* ``refgw-trio`` / ``refgw-asyncio``: the reference gateway, our receiver (that driver);
* ``trio-refrc`` / ``asyncio-refrc``: our gateway (that driver), the reference receiver.

Both receivers serve tests/v1_app.py. The reference runs from its unmodified tree in its own
virtual environment (tests/v1ref.py: the versions its uv.lock names, from PyPI, cached under
~/.cache/anpx-interop). Where shared/ is absent every test here skips, saying so.

What the reference itself cannot carry is documented where it shows, and the test asserts
what we guarantee instead:

* its metas are JSON objects, so a repeated query key keeps only its last value and a
  repeated header one field (our receiver combines Set-Cookie fields into one; the reference
  receiver keeps only the last);
* its receiver serves one request at a time (ours overlap them);
* its gateway answers 503 JSON when no receiver is connected (ours: 503 with a short reason);
* its gateway rate-limits each client address to 100 requests a minute, so each pairing here
  stays under that.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings

from . import v1_app, v1ref
from .deploy import start_gateway, start_receiver
from .processes import Proc, free_port

REFERENCE = v1ref.find_reference()
pytestmark = pytest.mark.skipif(
    REFERENCE is None,
    reason=f"the v1 reference is absent: no ../shared/peers/{v1ref.NAME} from the project root "
    "(nor $ANPX_REFERENCE_DIR)",
)
TESTS = Path(__file__).resolve().parent
PAIRS = ["refgw-trio", "refgw-asyncio", "trio-refrc", "asyncio-refrc"]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def ref_python() -> Path:
    assert REFERENCE is not None
    return v1ref.ensure_env(REFERENCE)


def _ref_config(path: Path, mode: str, http_port: int, wss_port: int) -> Path:
    """A reference config: loopback, TLS and DID-WBA off (its README's way), our test app."""
    path.write_text(
        f"""mode = "{mode}"
[logging]
level = "INFO"
[gateway]
host = "127.0.0.1"
port = {http_port}
wss_host = "127.0.0.1"
wss_port = {wss_port}
[gateway.tls]
enabled = false
[gateway.auth]
did_wba_enabled = false
[receiver]
gateway_url = "ws://127.0.0.1:{wss_port}"
local_app_module = "v1_app:app"
reconnect_delay = 1.0
[receiver.tls]
enabled = false
[receiver.auth]
did_wba_enabled = false
"""
    )
    return path


def _start_reference(python: Path, config: Path) -> Proc:
    assert REFERENCE is not None
    env = {"PYTHONPATH": os.pathsep.join([str(REFERENCE), str(TESTS)]), "NO_COLOR": "1"}
    return Proc([str(python), "anp_proxy.py", "--config", str(config)], cwd=REFERENCE, env=env)


def _wait_listening(port: int, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"reference not listening on {port}:\n{proc.output}") from None
            time.sleep(0.05)


def _wait_ready(url: str, timeout: float = 30.0) -> None:
    """Until a request gets through the tunnel (the receiver has connected)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{url}/echo", timeout=10)
        if r.status_code == 200:
            return
        assert time.monotonic() < deadline, f"tunnel not up: {r.status_code} {r.text[:200]}"
        time.sleep(0.1)


@dataclass
class Pair:
    name: str
    url: str  # the gateway's public HTTP address
    reference_receiver: bool
    ref: Proc
    ours: object  # the Runner of our side

    def stop(self) -> None:
        self.ours.stop()  # type: ignore[attr-defined]
        self.ref.stop()


def start_pair(name: str, python: Path, tmp: Path) -> Pair:
    if name.startswith("refgw-"):
        http, wss = free_port(), free_port()
        ref = _start_reference(python, _ref_config(tmp / f"{name}.toml", "gateway", http, wss))
        _wait_listening(http, ref)
        _wait_listening(wss, ref)
        settings = ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{wss}/"], reconnect_delay=0.2)
        ours = start_receiver(name.split("-")[1], settings, v1_app.app)
        pair = Pair(name, f"http://127.0.0.1:{http}", False, ref, ours)
    else:
        # 50 requests at once from one address, queued by a receiver that serves one at a
        # time: over the default per-address cap (20), which this test is not about
        gateway = start_gateway(
            name.split("-")[0], GatewaySettings(max_streams_per_address=0), admin=False
        )
        ports = gateway.obj.ports
        config = _ref_config(tmp / f"{name}.toml", "receiver", free_port(), ports.tunnel)
        ref = _start_reference(python, config)
        pair = Pair(name, f"http://127.0.0.1:{ports.http}", True, ref, gateway)
    try:
        _wait_ready(pair.url)
    except BaseException:
        pair.stop()
        raise
    return pair


@pytest.fixture(scope="module", params=PAIRS)
def pair(request, ref_python, tmp_path_factory):
    p = start_pair(request.param, ref_python, tmp_path_factory.mktemp("v1"))
    yield p
    p.stop()


def get(pair: Pair, target: str, **kw) -> httpx.Response:
    return httpx.get(pair.url + target, timeout=60, **kw)


def post(pair: Pair, target: str, **kw) -> httpx.Response:
    return httpx.post(pair.url + target, timeout=60, **kw)


# --- the checks ------------------------------------------------------------------------------


def test_query_string(pair):
    r = get(pair, "/echo?a=1&b=x%20y&c=%C3%A9&a=2")
    assert r.status_code == 200
    got = r.json()
    assert got["path"] == "/echo" and got["method"] == "GET"
    assert got["query"]["b"] == ["x y"] and got["query"]["c"] == ["é"]
    # v1's query is a JSON object: a repeated key keeps only its last value through the reference
    assert got["query"]["a"] == ["2"]


def test_json_post(pair):
    doc = {"k": [1, 2.5, None, True], "s": "é ✓", "nested": {"x": "y"}}
    r = post(pair, "/json", json=doc)
    assert r.status_code == 200 and r.json() == {"got": doc}
    assert r.headers["content-type"] == "application/json"


@pytest.mark.parametrize("size", [MiB, 20 * MiB], ids=["1MiB", "20MiB"])
def test_upload(pair, size):
    body = v1_app.pattern(size)
    r = post(pair, "/upload", content=body)
    assert r.status_code == 200
    assert r.json() == {"length": size, "sha256": hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("size", [MiB, 20 * MiB], ids=["1MiB", "20MiB"])
def test_download(pair, size):
    r = get(pair, f"/download?n={size}")
    assert r.status_code == 200
    assert len(r.content) == size and r.content == v1_app.pattern(size)


def test_all_256_byte_values_both_ways(pair):
    r = post(pair, "/upload", content=v1_app.PATTERN)
    assert r.json() == {"length": 256, "sha256": hashlib.sha256(v1_app.PATTERN).hexdigest()}
    r = get(pair, "/download?n=256")
    assert r.content == v1_app.PATTERN


def test_404(pair):
    r = get(pair, "/no/such/path")
    assert r.status_code == 404 and r.text == "no such path"


def test_50_concurrent_requests(pair):
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: get(pair, "/concurrent"), range(50)))
    assert [a.status_code for a in answers] == [200] * 50
    overlap = max(a.json()["max_in_flight"] for a in answers)
    if pair.reference_receiver:
        # the reference receiver handles one message at a time: all 50 succeed, in series
        assert overlap == 1
    else:
        assert overlap > 1  # our receiver serves them side by side


def test_two_set_cookie_fields(pair):
    r = get(pair, "/cookies")
    assert r.status_code == 200
    cookies = r.headers.get_list("set-cookie")
    if pair.reference_receiver:
        # the reference receiver keeps response headers in a dict: only the last field survives
        assert cookies == ["b=2; Path=/"]
    else:
        # our receiver gives a v1 gateway both values combined in one field (RFC 9110)
        assert cookies == ["a=1; Path=/, b=2; Path=/"]


# --- a receiver that is not there ------------------------------------------------------------


def test_reference_gateway_without_receiver_answers_503(ref_python, tmp_path):
    http, wss = free_port(), free_port()
    ref = _start_reference(ref_python, _ref_config(tmp_path / "gw.toml", "gateway", http, wss))
    try:
        _wait_listening(http, ref)
        r = httpx.get(f"http://127.0.0.1:{http}/echo", timeout=10)
        assert r.status_code == 503 and "No receiver available" in r.text  # the reference's
    finally:
        ref.stop()


@pytest.mark.parametrize("driver", ["trio", "asyncio"])
def test_our_gateway_when_the_reference_receiver_leaves(ref_python, tmp_path, driver):
    """Requests answer 503 (with a short reason) once the reference receiver is gone."""
    gateway = start_gateway(driver, GatewaySettings(), admin=False)
    try:
        ports = gateway.obj.ports
        url = f"http://127.0.0.1:{ports.http}"
        config = _ref_config(tmp_path / "rc.toml", "receiver", free_port(), ports.tunnel)
        ref = _start_reference(ref_python, config)
        try:
            _wait_ready(url)
        finally:
            ref.kill()
        deadline = time.monotonic() + 10
        while (r := httpx.get(f"{url}/echo", timeout=10)).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r.status_code == 503 and len(r.text) < 200
    finally:
        gateway.stop()


@pytest.mark.parametrize("driver", ["trio", "asyncio"])
def test_our_receiver_waits_for_an_absent_reference_gateway(ref_python, tmp_path, driver):
    """Started before the reference gateway, our receiver keeps retrying and then serves."""
    http, wss = free_port(), free_port()
    settings = ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{wss}/"], reconnect_delay=0.2)
    ours = start_receiver(driver, settings, v1_app.app)
    try:
        ref = _start_reference(ref_python, _ref_config(tmp_path / "gw.toml", "gateway", http, wss))
        try:
            _wait_listening(http, ref)
            _wait_ready(f"http://127.0.0.1:{http}")
        finally:
            ref.stop()
    finally:
        ours.stop()


# --- idle tunnels ----------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tunnels_idle_for_75_seconds_stay_up(ref_python, tmp_path):
    """All four pairings idle side by side for 75 s (the reference gateway checks staleness
    every 60 s and drops receivers that sent no JSON ping for 20 s); none reconnects."""
    lines = _Lines()
    logging.getLogger("anpx").addHandler(lines)
    pairs = []
    try:
        for name in PAIRS:
            pairs.append(start_pair(name, ref_python, tmp_path))
        before = {p.name: len(p.ref.lines) for p in pairs}
        time.sleep(75)  # the behaviour under test is idleness itself
        for p in pairs:
            assert get(p, "/echo?after=idle").status_code == 200, p.name
            ref_log = "\n".join(p.ref.lines[before[p.name] :])
            assert "stale" not in ref_log.lower(), (p.name, ref_log)
            assert "connection closed" not in ref_log.lower(), (p.name, ref_log)
        closed = [line for line in lines.lines if "closed" in line or "gone" in line]
        assert closed == [], closed
    finally:
        logging.getLogger("anpx").removeHandler(lines)
        for p in pairs:
            p.stop()


def test_vectors_carry_the_references_bytes(ref_python):
    """conformance/make_vectors.py's REFERENCE_* hex is what the reference encodes today."""
    import subprocess

    assert REFERENCE is not None
    out = subprocess.run(
        [str(ref_python), str(TESTS / "v1ref_capture.py")],
        env={**os.environ, "PYTHONPATH": str(REFERENCE)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    sys.path.insert(0, str(TESTS.parent / "conformance"))
    try:
        import make_vectors
    finally:
        sys.path.pop(0)
    for name in ("REQUEST", "RESPONSE", "ERROR"):
        frames = getattr(make_vectors, f"REFERENCE_CHUNKED_{name}")
        assert all(f'"{h}"' in out for h in frames), name
    total = sum(
        len(getattr(make_vectors, f"REFERENCE_CHUNKED_{n}"))
        for n in ("REQUEST", "RESPONSE", "ERROR")
    )
    assert out.count('"') == 2 * total  # and nothing more


def test_a_websocket_to_a_v1_receiver_is_501_at_once(pair):
    """A v1 receiver cannot carry a WebSocket (no ws extension): the client learns at
    once, with the reason, instead of a hang or an HTTP answer it cannot use."""
    if not pair.reference_receiver:
        pytest.skip("the reference gateway does not carry WebSockets")
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as info:
        connect(pair.url.replace("http://", "ws://") + "/ws", open_timeout=10)
    assert info.value.response.status_code == 501
    assert b"does not support WebSocket streams" in info.value.response.body
