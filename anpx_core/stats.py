"""What the gateway counts, and its three views: /health, /stats (JSON), /metrics (Prometheus)."""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: Latency histogram buckets (seconds), the Prometheus client defaults.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_RECENT = 2048  # durations kept for the percentiles in /stats
MAX_ROUTE_LABELS = 1000  # distinct route labels in metrics; the rest count as "other"
MAX_SERVICE_LABELS = 256  # distinct TCP service labels; the rest count as "other"


@dataclass(slots=True)
class TcpCounters:
    """One TCP service's counters at the gateway (public ports and visitors together)."""

    opened: int = 0  # streams opened to a receiver
    bytes_in: int = 0  # from clients (public connections, visitors) toward the service
    bytes_out: int = 0  # from the service to clients
    connect_failures: int = 0  # no receiver offered it, or the receiver could not connect

    def as_dict(self, open_now: int) -> dict[str, int]:
        return {
            "open": open_now,
            "opened": self.opened,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connect_failures": self.connect_failures,
        }


@dataclass(slots=True)
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1


@dataclass(slots=True)
class Stats:
    requests: int = 0
    responses: dict[tuple[str, int], int] = field(default_factory=dict)  # (route, status) -> n
    durations: dict[str, _Histogram] = field(default_factory=dict)  # route -> histogram
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_RECENT))
    bytes_in: int = 0  # request body bytes from clients
    bytes_out: int = 0  # response body bytes to clients
    timeouts: int = 0
    resets: int = 0
    client_aborts: int = 0
    rejected_connections: int = 0
    rate_limited: int = 0
    auth_failures: int = 0
    tunnels_opened: int = 0
    reconnects: int = 0  # tunnels opened by a receiver id seen before
    tcp: dict[str, TcpCounters] = field(default_factory=dict)  # per TCP service
    _seen_ids: set[str] = field(default_factory=set)

    def tcp_service(self, service: str) -> TcpCounters:
        """The counters of ``service`` (bounded: past MAX_SERVICE_LABELS, "other")."""
        counters = self.tcp.get(service)
        if counters is None:
            if len(self.tcp) >= MAX_SERVICE_LABELS:
                service = "other"
                counters = self.tcp.get(service)
            if counters is None:
                counters = self.tcp[service] = TcpCounters()
        return counters

    def tcp_view(self, open_now: dict[str, int]) -> dict[str, dict[str, int]]:
        names = sorted(set(self.tcp) | set(open_now))
        return {n: self.tcp.get(n, TcpCounters()).as_dict(open_now.get(n, 0)) for n in names}

    def _label(self, route: str) -> str:
        if route in self.durations or len(self.durations) < MAX_ROUTE_LABELS:
            return route
        return "other"

    def record(self, route: str, status: int, seconds: float) -> None:
        route = self._label(route)
        key = (route, status)
        self.responses[key] = self.responses.get(key, 0) + 1
        histogram = self.durations.get(route)
        if histogram is None:  # not setdefault: that would build a histogram per request
            histogram = self.durations[route] = _Histogram()
        histogram.observe(seconds)
        self.recent.append(seconds)

    def tunnel_opened(self, identity: str) -> None:
        self.tunnels_opened += 1
        if identity in self._seen_ids:
            self.reconnects += 1
        elif len(self._seen_ids) < 100_000:
            self._seen_ids.add(identity)

    def percentiles(self) -> dict[str, float | None]:
        data = sorted(self.recent)
        if not data:
            return {"p50": None, "p90": None, "p99": None}

        def pick(q: float) -> float:
            return round(data[min(len(data) - 1, int(q * len(data)))] * 1000, 3)

        return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}

    def by_status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_route, status), n in self.responses.items():
            out[str(status)] = out.get(str(status), 0) + n
        return dict(sorted(out.items()))

    def health_json(self, *, ready: bool, receivers: int, draining: bool) -> bytes:
        status = "draining" if draining else "ok" if ready else "no_receivers"
        return json.dumps(
            {
                "status": status,
                "live": True,
                "ready": ready and not draining,
                "receivers": receivers,
            }
        ).encode()

    def stats_json(
        self,
        *,
        receivers: list[dict[str, Any]],
        routes: dict[str, int],
        in_flight: int,
        tcp_open: dict[str, int] | None = None,
    ) -> bytes:
        return json.dumps(
            {
                "receivers": receivers,
                "routes": routes,
                "in_flight": in_flight,
                "requests": self.requests,
                "responses_by_status": self.by_status(),
                "latency_ms": self.percentiles(),
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "timeouts": self.timeouts,
                "resets": self.resets,
                "client_aborts": self.client_aborts,
                "rejected_connections": self.rejected_connections,
                "rate_limited": self.rate_limited,
                "auth_failures": self.auth_failures,
                "tunnels_opened": self.tunnels_opened,
                "reconnects": self.reconnects,
                "tcp": self.tcp_view(tcp_open or {}),
            }
        ).encode()

    def prometheus(
        self,
        *,
        receivers: int,
        in_flight: int,
        identities: tuple[str, ...] = (),
        tcp_open: dict[str, int] | None = None,
    ) -> bytes:
        """The Prometheus text exposition format, version 0.0.4."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        metric("anpx_requests_total", "counter", "Requests answered, by route and status.")
        for (route, status), n in sorted(self.responses.items()):
            lines.append(f'anpx_requests_total{{route="{_escape(route)}",status="{status}"}} {n}')
        metric(
            "anpx_request_duration_seconds", "histogram", "Time from request head to response end."
        )
        for route, hist in sorted(self.durations.items()):
            label = _escape(route)
            cumulative = 0
            for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(
                    f'anpx_request_duration_seconds_bucket{{route="{label}",le="{le}"}} {cumulative}'
                )
            lines.append(f'anpx_request_duration_seconds_sum{{route="{label}"}} {hist.total}')
            lines.append(f'anpx_request_duration_seconds_count{{route="{label}"}} {hist.n}')
        for name, kind, help_text, value in (
            (
                "anpx_request_bytes_total",
                "counter",
                "Request body bytes received from clients.",
                self.bytes_in,
            ),
            (
                "anpx_response_bytes_total",
                "counter",
                "Response body bytes sent to clients.",
                self.bytes_out,
            ),
            ("anpx_receivers", "gauge", "Receivers connected now.", receivers),
            ("anpx_in_flight_requests", "gauge", "Requests being served now.", in_flight),
            (
                "anpx_tunnels_opened_total",
                "counter",
                "Tunnels opened by receivers.",
                self.tunnels_opened,
            ),
            (
                "anpx_receiver_reconnects_total",
                "counter",
                "Tunnels opened by a receiver seen before.",
                self.reconnects,
            ),
            ("anpx_timeouts_total", "counter", "Requests answered 504.", self.timeouts),
            ("anpx_rate_limited_total", "counter", "Requests answered 429.", self.rate_limited),
            (
                "anpx_auth_failures_total",
                "counter",
                "Refused tunnel handshakes.",
                self.auth_failures,
            ),
            (
                "anpx_client_aborts_total",
                "counter",
                "Requests abandoned by their client.",
                self.client_aborts,
            ),
        ):
            metric(name, kind, help_text)
            lines.append(f"{name} {value}")
        # who is connected: the client id, or the DID a DID-WBA receiver proved
        metric("anpx_receiver_tunnels", "gauge", "Tunnels open now, by receiver identity.")
        for identity in sorted(set(identities)):
            count = identities.count(identity)
            lines.append(f'anpx_receiver_tunnels{{id="{_escape(identity)}"}} {count}')
        tcp = self.tcp_view(tcp_open or {})
        for name, kind, help_text, key in (
            ("anpx_tcp_streams", "gauge", "TCP streams open now, by service.", "open"),
            ("anpx_tcp_streams_opened_total", "counter", "TCP streams opened.", "opened"),
            (
                "anpx_tcp_connect_failures_total",
                "counter",
                "TCP connections not made: no receiver offered the service, or its connect failed.",
                "connect_failures",
            ),
        ):
            metric(name, kind, help_text)
            for service, values in tcp.items():
                lines.append(f'{name}{{service="{_escape(service)}"}} {values[key]}')
        metric("anpx_tcp_bytes_total", "counter", "TCP bytes relayed, by service and direction.")
        for service, values in tcp.items():
            label = _escape(service)
            lines.append(
                f'anpx_tcp_bytes_total{{service="{label}",direction="in"}} {values["bytes_in"]}'
            )
            lines.append(
                f'anpx_tcp_bytes_total{{service="{label}",direction="out"}} {values["bytes_out"]}'
            )
        return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
