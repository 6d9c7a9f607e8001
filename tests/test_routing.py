"""Many receivers: routes, load balancing, failover, drain, two gateways, observability."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings
from anpx_core.routing import (
    DEFAULT_ROUTE,
    Route,
    RouteTable,
    claims_allowed,
    parse_route,
    parse_routes_header,
)

from .apps import app
from .deploy import start_gateway, start_receiver, wait_until

# --- the rules, sans IO ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "route"),
    [
        ("api.example.com/", Route("api.example.com", "/")),
        ("API.Example.com:443/v2/", Route("api.example.com", "/v2")),
        ("/agents/bob", Route(None, "/agents/bob")),
        ("*", DEFAULT_ROUTE),
        ("[::1]:8080/x", Route("[::1]", "/x")),
    ],
)
def test_parse_route(spec, route):
    assert parse_route(spec) == route


@pytest.mark.parametrize("bad", ["", "a b/", "/x?y", "host/a,b", "[::1/x"])
def test_bad_routes_are_refused(bad):
    with pytest.raises(ValueError):
        parse_route(bad)


def test_host_then_longest_prefix_then_default():
    table = RouteTable()
    for name, spec in [
        ("api", "api.example.com/"),
        ("v2", "api.example.com/v2"),
        ("bob", "/agents/bob"),
        ("any", "/"),
    ]:
        table.add(name, [parse_route(spec)])
    route = lambda host, path: str(table.match(host, path))  # noqa: E731
    assert route("api.example.com", "/v2/x") == "api.example.com/v2"
    assert route("API.example.com:8080", "/v2") == "api.example.com/v2"
    assert route("api.example.com", "/v20") == "api.example.com/"  # whole segments only
    assert route("api.example.com", "/agents/bob") == "api.example.com/"  # host beats path
    assert route("other.example", "/agents/bob/1") == "/agents/bob"
    assert route("other.example", "/agents/bobby") == "/"
    assert route(None, "/") == "/"


def test_unknown_vs_gone():
    table = RouteTable()
    table.add("r1", [parse_route("/only")])
    assert table.match("h", "/elsewhere") is None  # unknown -> 404
    table.remove("r1", [parse_route("/only")])
    assert table.match("h", "/only/x") == Route(None, "/only")  # known, nobody live -> 503
    assert table.receivers(Route(None, "/only")) == []


def test_claims_allow_list():
    allowed = [parse_route("api.example.com/"), parse_route("/agents/bob")]
    assert (
        claims_allowed([parse_route("api.example.com/v2"), parse_route("/agents/bob/x")], allowed)
        is None
    )
    assert claims_allowed([parse_route("/agents/alice")], allowed) == Route(None, "/agents/alice")
    assert claims_allowed([DEFAULT_ROUTE], allowed) == DEFAULT_ROUTE


@given(
    st.lists(
        st.sampled_from(["a.example/", "a.example/x", "/x", "/x/y", "/", "b.example/y"]), min_size=1
    ),
    st.sampled_from(["a.example", "b.example", None]),
    st.sampled_from(["/", "/x", "/x/y/z", "/y", "/xy"]),
)
def test_match_is_a_claimed_route_that_matches(specs, host, path):
    table = RouteTable()
    table.add("r", parse_routes_header(", ".join(specs)))
    route = table.match(host, path)
    if route is not None:
        assert route.matches(path) and route.host in (None, host)
        assert str(route) in table.routes


# --- over real sockets ----------------------------------------------------------------------


def named_app(name: str):
    async def handler(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/who"):
            headers = dict(scope["headers"])
            body = json.dumps(
                {
                    "name": name,
                    "path": scope["path"],
                    "request_id": headers.get(b"x-request-id", b"").decode(),
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return handler


def receiver(port: int, name: str, routes: list[str], driver: str = "trio", **kw):
    settings = ReceiverSettings(
        gateway_urls=[f"ws://127.0.0.1:{port}/"],
        client_id=name,
        routes=routes,
        reconnect_delay=0.05,
        **kw,
    )
    return start_receiver(driver, settings, named_app(name))


def who(client: httpx.Client, path: str, host: str | None = None) -> httpx.Response:
    return client.get(path, headers={"host": host} if host else {})


def test_routes_by_host_and_prefix_404_and_503():
    gateway = start_gateway("trio")
    ports = gateway.obj.ports
    receivers = [
        receiver(ports.tunnel, "api", ["api.example.com/"]),
        receiver(ports.tunnel, "bob", ["/who/bob"], driver="asyncio"),
    ]
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 2)
        with httpx.Client(base_url=f"http://127.0.0.1:{ports.http}") as client:
            assert who(client, "/who", "api.example.com").json()["name"] == "api"
            assert who(client, "/who/bob/1", "other.example").json()["name"] == "bob"
            assert who(client, "/who/bob/1", "api.example.com").json()["name"] == "api"
            r = who(client, "/who/alice", "other.example")
            assert r.status_code == 404 and "no route" in r.text
            receivers.pop(1).stop()
            wait_until(lambda: len(gateway.obj.core.receivers) == 1)
            r = who(client, "/who/bob", "other.example")
            assert r.status_code == 503 and "retry-after" in r.headers and "/who/bob" in r.text
    finally:
        for r in receivers:
            r.stop()
        gateway.stop()


def test_denied_route_claim_fails_the_handshake_with_a_reason(caplog):
    caplog.set_level(logging.ERROR, "anpx.receiver")
    claims = {"api": [parse_route("api.example.com/")]}
    gateway = start_gateway("trio", GatewaySettings(route_claims=claims))
    ports = gateway.obj.ports
    good = receiver(ports.tunnel, "api", ["api.example.com/v1"])
    bad = receiver(ports.tunnel, "mallory", ["api.example.com/"], max_reconnect_attempts=1)
    try:
        wait_until(lambda: "may not claim" in caplog.text)
        assert "403" in caplog.text and "mallory" in caplog.text
        assert [r["id"] for r in gateway.obj.core.receivers] == ["api"]
    finally:
        bad.stop()
        good.stop()
        gateway.stop()


def test_load_is_shared_by_fewest_pending_and_failover_is_immediate():
    gateway = start_gateway("trio")
    ports = gateway.obj.ports
    a = receiver(ports.tunnel, "a", [])
    b = receiver(ports.tunnel, "b", [], driver="asyncio")
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 2)
        base = f"http://127.0.0.1:{ports.http}"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            slow = [pool.submit(httpx.get, f"{base}/slow?s=2", timeout=20) for _ in range(6)]
            wait_until(lambda: gateway.obj.core.in_flight == 6)
            streams = sorted(r["streams"] for r in gateway.obj.core.receivers)
            assert streams == [3, 3]  # fewest pending first
            a.stop()  # its 3 in-flight requests fail at once, not after the timeout
            codes = sorted(f.result(timeout=10).status_code for f in slow)
        assert codes == [200, 200, 200, 502, 502, 502]
        for _ in range(4):  # new requests go to the survivor
            assert httpx.get(f"{base}/who").json()["name"] == "b"
    finally:
        a.stop()
        b.stop()
        gateway.stop()


def test_all_receivers_at_their_limit_is_503():
    gateway = start_gateway("trio", GatewaySettings(max_streams_per_receiver=1))
    ports = gateway.obj.ports
    rc = receiver(ports.tunnel, "only", [])
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        base = f"http://127.0.0.1:{ports.http}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            busy = pool.submit(httpx.get, f"{base}/slow?s=1", timeout=10)
            wait_until(lambda: gateway.obj.core.in_flight == 1)
            r = httpx.get(f"{base}/who")
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert busy.result().status_code == 200
    finally:
        rc.stop()
        gateway.stop()


def test_draining_receiver_gets_no_new_requests_but_finishes_in_flight():
    gateway = start_gateway("trio")
    ports = gateway.obj.ports
    a = receiver(ports.tunnel, "a", [])
    b = receiver(ports.tunnel, "b", [])
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 2)
        base = f"http://127.0.0.1:{ports.http}"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            slow = [pool.submit(httpx.get, f"{base}/slow?s=1", timeout=10) for _ in range(2)]
            wait_until(lambda: gateway.obj.core.in_flight == 2)
            drained = pool.submit(a.call, lambda: a.obj.shutdown(grace=10))
            wait_until(lambda: any(r["draining"] for r in gateway.obj.core.receivers))
            names = {httpx.get(f"{base}/who").json()["name"] for _ in range(5)}
            assert names == {"b"}
            assert [f.result().status_code for f in slow] == [200, 200]
            drained.result(timeout=10)
    finally:
        a.stop()
        b.stop()
        gateway.stop()


def test_receiver_on_two_gateways_survives_one_killed_mid_traffic():
    g1, g2 = start_gateway("trio"), start_gateway("asyncio")
    urls = [f"ws://127.0.0.1:{g.obj.ports.tunnel}/" for g in (g1, g2)]
    rc = start_receiver(
        "asyncio",
        ReceiverSettings(gateway_urls=urls, client_id="ha", reconnect_delay=0.05),
        named_app("ha"),
    )
    stop = threading.Event()
    results: dict[str, list[int]] = {"g1": [], "g2": []}

    def traffic(name: str, port: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while not stop.is_set():
                try:
                    results[name].append(client.get("/who").status_code)
                except httpx.TransportError:
                    results[name].append(-1)  # the killed gateway's own socket closed

    try:
        wait_until(lambda: len(g1.obj.core.receivers) == 1 and len(g2.obj.core.receivers) == 1)
        threads = [
            threading.Thread(target=traffic, args=(n, g.obj.ports.http))
            for n, g in (("g1", g1), ("g2", g2))
        ]
        for t in threads:
            t.start()
        wait_until(lambda: len(results["g2"]) > 20 and len(results["g1"]) > 20)
        g1.stop()
        served_before = len(results["g2"])
        wait_until(lambda: len(results["g2"]) > served_before + 50)
        stop.set()
        for t in threads:
            t.join(10)
        assert set(results["g2"]) == {200}  # the surviving gateway never failed a request
        assert rc.obj.core.connected_links == 1
    finally:
        stop.set()
        rc.stop()
        g1.stop()
        g2.stop()


def test_request_id_metrics_and_stats(caplog):
    caplog.set_level(logging.INFO, "anpx.access")
    gateway = start_gateway("trio")
    ports = gateway.obj.ports
    rc = receiver(ports.tunnel, "obs", ["/who"])
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        base = f"http://127.0.0.1:{ports.http}"
        r = httpx.get(f"{base}/who", headers={"x-request-id": "client-chosen-42"})
        assert r.headers["x-request-id"] == "client-chosen-42"
        assert r.json()["request_id"] == "client-chosen-42"  # the app saw it
        r = httpx.get(f"{base}/who/x")
        created = r.headers["x-request-id"]
        assert r.json()["request_id"] == created and len(created) == 36
        r = httpx.get(f"{base}/who", headers={"x-request-id": "bad id\twith spaces"})
        assert r.headers["x-request-id"] != "bad id\twith spaces"
        assert httpx.get(f"{base}/elsewhere").headers["x-request-id"]  # gateway's own answers too
        wait_until(lambda: "client-chosen-42" in caplog.text and created in caplog.text)
        both_sides = [rec.name for rec in caplog.records if "client-chosen-42" in rec.getMessage()]
        assert set(both_sides) == {"anpx.access.gateway", "anpx.access.receiver"}

        admin = f"http://127.0.0.1:{ports.admin}"
        metrics = httpx.get(f"{admin}/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = metrics.text
        assert 'anpx_requests_total{route="/who",status="200"} 3' in text
        assert 'anpx_requests_total{route="-",status="404"} 1' in text
        assert 'anpx_request_duration_seconds_count{route="/who"} 3' in text
        assert "anpx_receivers 1" in text
        stats = httpx.get(f"{admin}/stats").json()
        assert stats["routes"] == {"/who": 1}
        assert stats["receivers"][0]["id"] == "obs"
        assert stats["latency_ms"]["p50"] is not None
        assert httpx.get(f"{admin}/health").json() == {
            "status": "ok",
            "live": True,
            "ready": True,
            "receivers": 1,
        }
    finally:
        rc.stop()
        gateway.stop()


def test_receiver_answers_503_beyond_its_own_concurrency_limit():
    gateway = start_gateway("trio", GatewaySettings(max_streams_per_receiver=10))
    ports = gateway.obj.ports
    rc = receiver(ports.tunnel, "small", [], driver="asyncio", max_concurrent_requests=1)
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        base = f"http://127.0.0.1:{ports.http}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            busy = pool.submit(httpx.get, f"{base}/slow?s=1", timeout=10)
            wait_until(lambda: rc.obj.core.in_flight == 1)
            r = httpx.post(f"{base}/upload", content=b"x" * 3_000_000)  # its upload is refused too
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "receiver busy" in r.text
            assert busy.result().status_code == 200
        assert httpx.get(f"{base}/who").status_code == 200  # nothing stuck afterwards
        assert gateway.obj.core.in_flight == 0
    finally:
        rc.stop()
        gateway.stop()
