"""The admin listener of a multi-worker gateway: /health, /stats and /metrics for all workers.

Each worker answers for itself on its own loopback admin port (the single-process admin,
unchanged); the supervisor's admin listener, on ``admin_host:admin_port``, asks every worker
over loopback when asked and combines the answers. Nothing is cached or published: an answer
is as fresh as the workers' own, and a worker that does not answer within
:data:`WORKER_TIMEOUT` shows as ``down``.

Combining (the functions below are pure, tested without processes):

* /health: 200 while at least one worker answers and every worker that answers is ready
  (a dead worker's share of the port goes to the live ones, so it does not make the gateway
  unready); ``receivers`` is the fewest any answering worker has;
* /stats: counters summed, ``responses_by_status`` and ``routes`` summed per key,
  ``receivers`` listed with their ``worker``, ``latency_ms`` the highest per quantile (an upper
  bound: percentiles do not add up), and each worker's own answer under ``workers``;
* /metrics: every worker's samples with a ``worker="<index>"`` label (sum them in PromQL),
  plus ``anpx_workers`` and ``anpx_workers_up``.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import StartupError

log = logging.getLogger("anpx")

WORKER_TIMEOUT = 2.0  # seconds one worker's admin answer may take
MAX_ANSWER = 8 * 1024 * 1024  # bytes read from one worker's answer

Answer = tuple[int, Any]  # worker index, its parsed answer (None: down)

_SUMMED_DICTS = ("responses_by_status", "routes")


def combine_health(answers: list[Answer], draining: bool = False) -> tuple[int, dict[str, Any]]:
    up = [(i, a) for i, a in answers if isinstance(a, dict)]
    ready = bool(up) and all(a.get("ready") is True for _, a in up) and not draining
    if draining or any(a.get("status") == "draining" for _, a in up):
        status = "draining"
    elif not up:
        status = "no_workers"
    else:
        status = "ok" if ready else "no_receivers"
    receivers = [a.get("receivers") for _, a in up]
    body = {
        "status": status,
        "live": True,
        "ready": ready,
        "receivers": min((r for r in receivers if isinstance(r, int)), default=0),
        "workers": [
            {"worker": i, **a} if isinstance(a, dict) else {"worker": i, "status": "down"}
            for i, a in answers
        ],
    }
    return (200 if ready else 503), body


def combine_stats(answers: list[Answer]) -> dict[str, Any]:
    total: dict[str, Any] = {"receivers": [], "latency_ms": {}}
    for key in _SUMMED_DICTS:
        total[key] = {}
    for index, answer in answers:
        if not isinstance(answer, dict):
            continue
        for key, value in answer.items():
            if key == "receivers" and isinstance(value, list):
                total["receivers"] += [{**r, "worker": index} for r in value if isinstance(r, dict)]
            elif key in _SUMMED_DICTS and isinstance(value, dict):
                into = total[key]
                for k, n in value.items():
                    if isinstance(n, int) and not isinstance(n, bool):
                        into[k] = into.get(k, 0) + n
            elif key == "tcp" and isinstance(value, dict):  # service -> counters
                into = total.setdefault("tcp", {})
                for service, counters in value.items():
                    if isinstance(counters, dict):
                        mine = into.setdefault(service, {})
                        for k, n in counters.items():
                            if isinstance(n, int) and not isinstance(n, bool):
                                mine[k] = mine.get(k, 0) + n
            elif key == "latency_ms" and isinstance(value, dict):
                into = total["latency_ms"]
                for q, ms in value.items():
                    if isinstance(ms, (int, float)) and not isinstance(ms, bool):
                        into[q] = max(ms, into.get(q) or 0)
                    else:
                        into.setdefault(q, None)
            elif isinstance(value, int) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    total["workers"] = [
        {"worker": i, "status": "up", "stats": a}
        if isinstance(a, dict)
        else {"worker": i, "status": "down"}
        for i, a in answers
    ]
    return total


def combine_metrics(answers: list[Answer]) -> str:
    """One exposition: each family's HELP and TYPE once, then every worker's samples."""
    families: dict[str, list[str]] = {}  # name -> [HELP line, TYPE line]
    samples: dict[str, list[str]] = {}
    for index, text in answers:
        if not isinstance(text, str):
            continue
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ", 3)[2] if line.count(" ") >= 2 else ""
                head = families.setdefault(family, [])
                if len(head) < 2 and line not in head:
                    head.append(line)
                samples.setdefault(family, [])
            elif line and not line.startswith("#"):
                samples.setdefault(family, []).append(_label(line, index))
    up = sum(1 for _, text in answers if isinstance(text, str))
    out = [
        "# HELP anpx_workers Gateway worker processes configured.",
        "# TYPE anpx_workers gauge",
        f"anpx_workers {len(answers)}",
        "# HELP anpx_workers_up Gateway worker processes answering their admin listener.",
        "# TYPE anpx_workers_up gauge",
        f"anpx_workers_up {up}",
    ]
    for family, lines in samples.items():
        out += families.get(family, [])
        out += lines
    return "\n".join(out) + "\n"


def _label(sample: str, index: int) -> str:
    name_end = min((i for i in (sample.find("{"), sample.find(" ")) if i >= 0), default=-1)
    if name_end < 0:
        return sample
    if sample[name_end] == "{":
        rest = sample[name_end + 1 :]
        sep = "" if rest.startswith("}") else ","
        return f'{sample[:name_end]}{{worker="{index}"{sep}{rest}'
    return f'{sample[:name_end]}{{worker="{index}"}}{sample[name_end:]}'


def ask_worker(port: int, path: str, token: bytes | None) -> tuple[int, bytes] | None:
    """One worker admin answer over loopback: (status, body), None when it does not answer."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token.decode('utf-8', 'replace')}")
    try:
        with urllib.request.urlopen(request, timeout=WORKER_TIMEOUT) as response:
            return response.status, response.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:  # /health answers 503 with a body
        with exc:
            return exc.code, exc.read(MAX_ANSWER)
    except (OSError, ValueError) as exc:
        log.debug("worker admin on port %d did not answer %s: %s", port, path, exc)
        return None


class FleetAdmin:
    """The supervisor's admin listener; ``workers()`` gives (index, admin port or None, pid)."""

    def __init__(
        self,
        host: str,
        port: int,
        token: bytes | None,
        workers: Callable[[], list[tuple[int, int | None, int | None]]],
        draining: Callable[[], bool],
    ) -> None:
        self.token = token
        self.workers = workers
        self.draining = draining
        server_class = _Server6 if ":" in host else _Server
        try:
            self.server = server_class((host.strip("[]"), port), _handler(self))
        except OSError as exc:
            from .launch import bind_failure

            raise bind_failure(host, port, exc) from None
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, authorization: str | None) -> tuple[int, str, bytes]:
        if path in ("/stats", "/metrics") and not self._allowed(authorization):
            return 401, "application/json", b'{"error": "a bearer token is required"}'
        if path == "/health":
            status, body = combine_health(self._ask(path, json=True), self.draining())
            pids = {index: pid for index, _port, pid in self.workers()}
            for entry in body["workers"]:
                entry["pid"] = pids.get(entry["worker"])
            return status, "application/json", json.dumps(body).encode()
        if path == "/stats":
            body = combine_stats(self._ask(path, json=True))
            return 200, "application/json", json.dumps(body).encode()
        if path == "/metrics":
            text = combine_metrics(self._ask(path, json=False))
            return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode()
        return 404, "text/plain", b"unknown admin path; try /health, /stats or /metrics\n"

    def _ask(self, path: str, *, json: bool) -> list[Answer]:
        answers: list[Answer] = []
        for index, port, _pid in self.workers():
            got = None if port is None else ask_worker(port, path, self.token)
            answers.append((index, None if got is None else _parse(got[1], json)))
        return answers

    def _allowed(self, authorization: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (authorization or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self.token
        )


def _parse(body: bytes, as_json: bool) -> Any:
    try:
        return json.loads(body) if as_json else body.decode("utf-8")
    except ValueError:
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _handler(admin: FleetAdmin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a client may take to send its request
        server_version = "anpx"
        sys_version = ""

        def do_GET(self) -> None:
            try:
                status, content_type, body = admin.answer(
                    self.path.partition("?")[0], self.headers.get("authorization")
                )
            except Exception:  # the crash barrier: this request only
                log.exception("internal error answering %s on the admin listener", self.path)
                status, content_type, body = 500, "text/plain", b"internal error\n"
            self.send_response(status)
            if status == 401:
                self.send_header("www-authenticate", 'Bearer realm="anpx"')
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("admin: " + format, *args)

    return Handler


__all__ = ["FleetAdmin", "StartupError", "combine_health", "combine_metrics", "combine_stats"]
