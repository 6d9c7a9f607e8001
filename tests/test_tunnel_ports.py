"""A receiver learns a multi-worker gateway's tunnel endpoints from its 101 (anpx-tunnel-ports)
and holds a tunnel to each; sans IO, the cores carried byte for byte in memory."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anpx_core.gateway import GatewayCore, GatewaySettings
from anpx_core.receiver import ReceiverCore, ReceiverSettings
from anpx_core.siblings import (
    MAX_HEADER_LENGTH,
    TUNNEL_PORTS_HEADER,
    format_tunnel_ports,
    parse_tunnel_ports,
)
from anpx_core.strict import StrictError

HOST = "gw.example"


class Fleet:
    """Gateway cores by tunnel port, one receiver core, and the sockets between them."""

    def __init__(self, ports: list[int], receiver: ReceiverSettings | None = None) -> None:
        self.gateways = {p: GatewayCore(GatewaySettings(tunnel_ports=ports)) for p in ports}
        self.receiver = ReceiverCore(
            receiver or ReceiverSettings(gateway_urls=[f"ws://{HOST}:{ports[0]}/"])
        )
        self.sockets: dict[int, tuple[GatewayCore, int]] = {}  # receiver cid -> gateway, cid
        self.now = 0.0
        self.refused: list[int] = []  # ports dialled with no gateway there

    def run(self, rounds: int = 30) -> None:
        r = self.receiver
        for _ in range(rounds):
            for request in r.pop_connects():
                gateway = self.gateways.get(request.port)
                if gateway is None or request.host != HOST:
                    self.refused.append(request.port)
                    r.connect_failed(request.cid, self.now, "connection refused")
                    continue
                self.sockets[request.cid] = (
                    gateway,
                    gateway.open_tunnel(self.now, ("192.0.2.1", 1)),
                )
                r.connected(request.cid, self.now)
            for rcid, (gateway, gcid) in list(self.sockets.items()):
                up, r_close = r.take_output(rcid)
                r.written(rcid, self.now)
                if up:
                    gateway.receive(gcid, up, self.now)
                down, g_close = gateway.take_output(gcid)
                gateway.written(gcid, self.now)
                if down:
                    r.receive(rcid, down, self.now)
                if (r_close and not up) or (g_close and not down):
                    del self.sockets[rcid]
                    gateway.closed(gcid, self.now)
                    r.closed(rcid, self.now)
            r.pop_wakeups()

    def connected_ports(self) -> list[int]:
        return sorted(p for p, g in self.gateways.items() if g.receivers)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.receiver.handle_timer(self.now)
        self.run()


def test_one_url_learns_every_worker_and_holds_a_tunnel_to_each():
    fleet = Fleet([8765, 8766, 8767])
    fleet.receiver.start(fleet.now)
    fleet.run()
    assert fleet.connected_ports() == [8765, 8766, 8767]
    assert fleet.receiver.connected_links == 3


def test_a_single_process_gateway_names_nothing():
    assert format_tunnel_ports([]) == []
    fleet = Fleet([8765])
    fleet.gateways[8765].settings.tunnel_ports = []
    fleet.receiver.start(fleet.now)
    fleet.run()
    assert fleet.connected_ports() == [8765] and fleet.receiver.connected_links == 1


def test_a_dead_worker_is_redialled_and_a_change_is_followed():
    fleet = Fleet([8765, 8766, 8767])
    fleet.receiver.start(fleet.now)
    fleet.run()
    # worker 8767 dies: its link reconnects with backoff, the others keep serving
    dead = fleet.gateways.pop(8767)
    for rcid, (gateway, _gcid) in list(fleet.sockets.items()):
        if gateway is dead:
            del fleet.sockets[rcid]
            fleet.receiver.lost(rcid, fleet.now, "connection reset")
            fleet.receiver.closed(rcid, fleet.now)
    fleet.run()
    assert fleet.receiver.connected_links == 2
    fleet.advance(5.0)
    assert 8767 in fleet.refused  # it kept trying
    # the gateway restarts with two workers: the configured link's next 101 names 8765, 8766
    fleet.gateways[8765].close_tunnels()
    fleet.run()
    fleet.gateways[8765] = GatewayCore(GatewaySettings(tunnel_ports=[8765, 8766]))
    fleet.advance(5.0)
    assert fleet.connected_ports() == [8765, 8766]
    fleet.refused.clear()
    fleet.advance(60.0)
    fleet.advance(120.0)
    assert 8767 not in fleet.refused  # forgotten: never dialled again
    assert fleet.receiver.connected_links == 2


def test_a_forgotten_endpoint_that_is_open_is_closed():
    fleet = Fleet([8765, 8766, 8767])
    fleet.receiver.start(fleet.now)
    fleet.run()
    fleet.gateways[8765].close_tunnels()
    fleet.run()
    for p in (8765, 8766, 8767):
        fleet.gateways[p].settings.tunnel_ports = [8765, 8766]
    fleet.advance(5.0)
    assert fleet.connected_ports() == [8765, 8766]
    fleet.advance(120.0)
    assert fleet.connected_ports() == [8765, 8766] and fleet.receiver.connected_links == 2


def test_learning_is_bounded_and_can_be_turned_off(caplog):
    caplog.set_level(logging.WARNING, "anpx")
    ports = [8765, 8766, 8767, 8768]
    bounded = ReceiverSettings(gateway_urls=[f"ws://{HOST}:8765/"], max_learned_endpoints=3)
    fleet = Fleet(ports, bounded)
    fleet.receiver.start(fleet.now)
    fleet.run()
    assert fleet.connected_ports() == [8765, 8766, 8767, 8768]  # three learned: at the limit
    bounded = ReceiverSettings(gateway_urls=[f"ws://{HOST}:8765/"], max_learned_endpoints=2)
    fleet = Fleet(ports, bounded)
    fleet.receiver.start(fleet.now)
    fleet.run()
    assert fleet.connected_ports() == [8765]  # a header past the limit is ignored whole
    assert any(TUNNEL_PORTS_HEADER in r.getMessage() for r in caplog.records)
    off = ReceiverSettings(gateway_urls=[f"ws://{HOST}:8765/"], learn_endpoints=False)
    fleet = Fleet(ports, off)
    fleet.receiver.start(fleet.now)
    fleet.run()
    assert fleet.connected_ports() == [8765]


def test_configured_urls_are_not_dialled_twice():
    urls = [f"ws://{HOST}:8765/", f"ws://{HOST}:8766/"]
    fleet = Fleet([8765, 8766], ReceiverSettings(gateway_urls=urls))
    fleet.receiver.start(fleet.now)
    fleet.run()
    assert fleet.connected_ports() == [8765, 8766] and fleet.receiver.connected_links == 2
    assert all(len(g.receivers) == 1 for g in fleet.gateways.values())


def test_draining_closes_learned_links_too():
    fleet = Fleet([8765, 8766])
    fleet.receiver.start(fleet.now)
    fleet.run()
    fleet.receiver.begin_drain()
    fleet.receiver.close()
    fleet.run()
    fleet.advance(120.0)
    assert fleet.connected_ports() == [] and fleet.refused == []


@pytest.mark.parametrize(
    ("value", "ports"),
    [("8765", [8765]), ("8765, 8766,8767", [8765, 8766, 8767]), ("1,65535,1", [1, 65535])],
)
def test_parse_accepts(value, ports):
    assert parse_tunnel_ports(value, 8) == ports


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "0",
        "65536",
        "-1",
        "+1",
        "8765;8766",
        "\uff18\uff17\uff16\uff15",
        "1_0",
        "8765,",
        "1,2,3",
    ],
)
def test_parse_refuses(value):
    with pytest.raises(StrictError):
        parse_tunnel_ports(value, 2)


def test_parse_refuses_an_overlong_value():
    with pytest.raises(StrictError):
        parse_tunnel_ports("1," * MAX_HEADER_LENGTH, 10**6)


@given(st.text(max_size=60))
def test_parse_never_raises_anything_else(value):
    try:
        ports = parse_tunnel_ports(value, 4)
    except StrictError:
        return
    assert 1 <= len(ports) <= 4 and all(1 <= p <= 65535 for p in ports)


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=16, unique=True))
def test_format_parse_round_trip(ports):
    [(name, value)] = format_tunnel_ports(ports)
    assert name == TUNNEL_PORTS_HEADER and parse_tunnel_ports(value, 16) == ports
