"""Counters the gateway keeps for /health and /stats."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(slots=True)
class Stats:
    requests: int = 0
    responses_by_status: dict[int, int] = field(default_factory=dict)
    bytes_in: int = 0  # request body bytes from clients
    bytes_out: int = 0  # response body bytes to clients
    timeouts: int = 0
    resets: int = 0
    client_aborts: int = 0
    rejected_connections: int = 0
    auth_failures: int = 0
    tunnels_opened: int = 0

    def record(self, status: int, body_bytes: int) -> None:
        self.responses_by_status[status] = self.responses_by_status.get(status, 0) + 1

    def health_json(self, *, ready: bool, receivers: int) -> bytes:
        return json.dumps(
            {"status": "ok" if ready else "no_receivers", "ready": ready, "receivers": receivers}
        ).encode()

    def stats_json(self, *, receivers: list[dict], in_flight: int) -> bytes:
        return json.dumps(
            {
                "receivers": receivers,
                "in_flight": in_flight,
                "requests": self.requests,
                "responses_by_status": {
                    str(k): v for k, v in sorted(self.responses_by_status.items())
                },
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "timeouts": self.timeouts,
                "resets": self.resets,
                "client_aborts": self.client_aborts,
                "rejected_connections": self.rejected_connections,
                "auth_failures": self.auth_failures,
                "tunnels_opened": self.tunnels_opened,
            }
        ).encode()
