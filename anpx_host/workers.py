"""A gateway on every core: ``[gateway] workers = N`` runs N gateway processes and supervises them.

The process started by the user becomes the **supervisor**; it serves no traffic itself. It
starts N **workers**, each the same command (``python -m <driver> <the same arguments>``) with
:data:`WORKER_ENV` saying which worker it is; each runs the ordinary single-process gateway
with these differences (:func:`apply_role`):

* the public HTTP listener is shared: every worker binds the same port with ``SO_REUSEPORT``,
  and the kernel spreads new connections over them (Linux hashes each connection to one
  listener; on other systems that have the option the spread may be uneven). Without
  ``SO_REUSEPORT`` (Windows) ``workers > 1`` is refused at start;
* each worker has its own tunnel listener, worker ``i`` on ``wss_port + i`` (with
  ``wss_port = 0`` the supervisor picks N free ports), and names all of them in its ``101``
  (``anpx-tunnel-ports``, docs/protocol.md §15.1), so a receiver given one URL holds a
  tunnel to every worker;
* its admin listener is on 127.0.0.1, on a free port; the supervisor's own admin listener
  (``admin_host:admin_port``) answers for all workers (:mod:`anpx_host.workeradmin`).

Ports given as 0 are reserved by the supervisor with a bound, non-listening ``SO_REUSEPORT``
socket it keeps open, so a restarted worker gets the same port back.

A worker reports its bound ports on a pipe (:meth:`WorkerRole.report_ready`); once all have,
the supervisor prints the ready lines. A worker that exits is restarted after
``worker_restart_delay``, doubling (up to :data:`MAX_RESTART_DELAY`) while it keeps dying
within :data:`STABLE_AFTER` seconds of its start. A restarted worker opens its public listener
only once a receiver is on its tunnel, or after ``worker_receiver_wait`` seconds
(:mod:`anpx_host.warmup`). SIGTERM or SIGINT to the supervisor is
forwarded to every worker as SIGTERM (each drains within ``shutdown_grace``); a worker still
running ``shutdown_grace`` + :data:`KILL_MARGIN` seconds later is killed. A worker that fails
before the first ready report (port in use, bad certificate) stops the whole start with exit
status 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import StartupError
from .launch import Listener, Plan, ready_lines

log = logging.getLogger("anpx")

WORKER_ENV = "ANPX_WORKER"
MAX_RESTART_DELAY = 30.0  # seconds
STABLE_AFTER = 10.0  # a worker that ran this long before dying is restarted after the first delay
KILL_MARGIN = 5.0  # seconds past shutdown_grace before a draining worker is killed
POLL = 0.2  # seconds between looks at the workers (signals and pipes wake it sooner)
MAX_RECEIVER_WAIT = 3600.0  # [gateway] worker_receiver_wait's bound


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What the supervisor tells one worker (JSON in :data:`WORKER_ENV`)."""

    index: int
    http_port: int
    tunnel_ports: tuple[int, ...]
    ready_fd: int
    life_fd: int  # read end of a pipe the supervisor holds open: EOF means it is gone
    receiver_wait: float = 0.0  # a restart: hold the public port for a receiver, at most this

    def watch_supervisor(self) -> None:
        """Drain (SIGTERM ourselves) when the supervisor dies, even by SIGKILL: a worker
        never outlives it (a thread blocked on the pipe; no polling)."""

        def wait() -> None:
            try:
                while os.read(self.life_fd, 64):
                    pass
            except OSError:
                pass
            log.warning("the supervisor is gone: draining")
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=wait, name="anpx-supervisor-watch", daemon=True).start()

    def report_ready(self, http: int, tunnel: int, admin: int | None) -> None:
        line = json.dumps({"http": http, "tunnel": tunnel, "admin": admin}) + "\n"
        try:
            os.write(self.ready_fd, line.encode())
            os.close(self.ready_fd)
        except OSError as exc:  # the supervisor is gone: serve anyway, it will not restart us
            log.warning("cannot report to the supervisor: %s", exc)


def worker_role(environ: dict[str, str] | None = None) -> WorkerRole | None:
    """This process's role when a supervisor started it, else None."""
    raw = (os.environ if environ is None else environ).get(WORKER_ENV)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        role = WorkerRole(
            int(data["index"]),
            int(data["http_port"]),
            tuple(int(p) for p in data["tunnel_ports"]),
            int(data["ready_fd"]),
            int(data["life_fd"]),
            float(data.get("receiver_wait", 0.0)),
        )
        if not 0 <= role.index < len(role.tunnel_ports):
            raise ValueError("index out of range")
        if not 0.0 <= role.receiver_wait <= MAX_RECEIVER_WAIT:  # also refuses nan
            raise ValueError("receiver_wait out of range")
    except (ValueError, KeyError, TypeError) as exc:
        raise StartupError(
            f"{WORKER_ENV} is malformed ({exc}): it is set by the supervisor"
        ) from None
    return role


def apply_role(plan: Plan, role: WorkerRole) -> None:
    """Turn a gateway plan into worker ``role.index``'s (see the module doc)."""
    g = plan.gateway
    if g is None:
        raise StartupError(f"{WORKER_ENV} is set, but this is not a gateway")
    g.http = replace(
        g.http, port=role.http_port, reuse_port=True, hold_for_receiver=role.receiver_wait
    )
    g.tunnel = replace(g.tunnel, port=role.tunnel_ports[role.index], reuse_port=True)
    if g.admin is not None:
        g.admin = Listener("127.0.0.1", 0)
    g.settings.tunnel_ports = list(role.tunnel_ports)
    g.worker = role


def prefix_logs(role: WorkerRole) -> None:
    """Every log line of a worker says which one it is."""
    tag = f"[worker {role.index}] "

    def add_tag(record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(tag):
            record.msg = tag + str(record.msg)
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(add_tag)


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    life: int | None = None  # write end of its life pipe, held until it exits
    pipe: int | None = None  # read end of its ready pipe until it reported
    buffer: bytes = b""
    admin: int | None = None
    ready: bool = False
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


@dataclass(slots=True)
class Supervisor:
    plan: Plan
    argv: list[str]
    driver: str  # the driver's package, run as ``python -m driver``
    restart_delay: float = 1.0
    receiver_wait: float = 10.0  # a restarted worker's public port waits this long for a receiver
    workers: list[_Worker] = field(default_factory=list)
    http_port: int = 0
    tunnel_ports: tuple[int, ...] = ()
    _reserved: list[socket.socket] = field(default_factory=list)
    _selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    _stop: int | None = None  # the signal that asked us to stop
    _draining: bool = False

    # --- the whole life ------------------------------------------------------------------

    def run(self) -> None:
        g = self.plan.gateway
        assert g is not None
        if not hasattr(socket, "SO_REUSEPORT"):
            raise StartupError(
                "[gateway] workers: this system has no SO_REUSEPORT, which lets worker "
                "processes share a port: run one process per port behind a load balancer"
            )
        admin = None
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._reserve_ports()
            if g.admin is not None:
                from .workeradmin import FleetAdmin

                admin = FleetAdmin(
                    g.admin.host,
                    g.admin.port,
                    g.settings.admin_token,
                    self._admin_view,
                    lambda: self._draining,
                )
            self.workers = [_Worker(i) for i in range(g.workers)]
            for worker in self.workers:
                self._spawn(worker)
            if not self._start_all():
                return  # a signal before every worker was up: they were told to drain
            if admin is not None:
                admin.start()
            for line in self._ready_lines(None if admin is None else admin.port):
                print(line, flush=True)
            self._supervise()
        finally:
            self._stop_all()
            if admin is not None:
                admin.close()
            for sock in self._reserved:
                sock.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _admin_view(self) -> list[tuple[int, int | None, int | None]]:
        return [
            (w.index, w.admin if w.ready else None, w.proc.pid if w.proc is not None else None)
            for w in self.workers
        ]

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop is None:
            log.info(
                "%s received: draining %d workers", signal.Signals(signum).name, len(self.workers)
            )
        self._stop = signum

    # --- ports -------------------------------------------------------------------------------

    def _reserve_ports(self) -> None:
        g = self.plan.gateway
        assert g is not None
        self.http_port = g.http.port or self._reserve(g.http.host)
        base = g.tunnel.port
        if base == 0:
            self.tunnel_ports = tuple(self._reserve(g.tunnel.host) for _ in range(g.workers))
        elif base + g.workers - 1 > 65535:
            raise StartupError(
                f"[gateway] workers: wss_port {base} + {g.workers} workers goes past port 65535"
            )
        else:
            self.tunnel_ports = tuple(range(base, base + g.workers))

    def _reserve(self, host: str) -> int:
        """A free port, kept bound (never listening) so that it stays ours."""
        try:
            family, kind, proto, _n, addr = socket.getaddrinfo(
                host.strip("[]"), 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise StartupError(f"cannot reserve a port on {host}: {exc.strerror or exc}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot reserve a port on {host}: {exc.strerror or exc}") from None
        self._reserved.append(sock)
        return int(sock.getsockname()[1])

    # --- workers -----------------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        read_end, write_end = os.pipe()
        life_read, life_write = os.pipe()
        role = {
            "index": worker.index,
            "http_port": self.http_port,
            "tunnel_ports": list(self.tunnel_ports),
            "ready_fd": write_end,
            "life_fd": life_read,
            # at the first start every worker opens at once (503 until receivers come, not a
            # refused connection); a restarted one waits while its siblings serve the port
            "receiver_wait": self.receiver_wait if worker.proc is not None else 0.0,
        }
        env = {**os.environ, WORKER_ENV: json.dumps(role)}
        if worker.life is not None:
            os.close(worker.life)
        worker.life = life_write
        try:
            worker.proc = subprocess.Popen(
                [sys.executable, "-m", self.driver, *self.argv],
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(write_end, life_read),
            )
        finally:
            os.close(write_end)
            os.close(life_read)
        worker.pipe, worker.buffer, worker.ready, worker.admin = read_end, b"", False, None
        worker.started_at, worker.restart_at = time.monotonic(), None
        self._selector.register(read_end, selectors.EVENT_READ, worker)

    def _start_all(self) -> bool:
        """Wait until every worker reported its ports; StartupError if one exits first."""
        while not all(w.ready for w in self.workers):
            if self._stop is not None:
                return False
            self._read_pipes()
            for worker in self.workers:
                assert worker.proc is not None
                status = worker.proc.poll()
                if status is not None and not worker.ready:
                    raise StartupError(
                        f"gateway worker {worker.index} exited with status {status} while "
                        "starting (its error is above)"
                    )
        return True

    def _read_pipes(self) -> None:
        for key, _events in self._selector.select(POLL):
            worker: _Worker = key.data
            assert worker.pipe is not None
            chunk = os.read(worker.pipe, 4096)
            worker.buffer += chunk
            if chunk and b"\n" not in worker.buffer and len(worker.buffer) < 4096:
                continue
            self._close_pipe(worker)
            try:
                report = json.loads(worker.buffer.partition(b"\n")[0])
                admin = report["admin"]
                worker.admin = None if admin is None else int(admin)
                worker.ready = True
            except (ValueError, KeyError, TypeError):
                pass  # no report: it died while starting, poll() will tell

    def _close_pipe(self, worker: _Worker) -> None:
        if worker.pipe is not None:
            self._selector.unregister(worker.pipe)
            os.close(worker.pipe)
            worker.pipe = None

    def _supervise(self) -> None:
        while self._stop is None:
            self._read_pipes()
            now = time.monotonic()
            for worker in self.workers:
                assert worker.proc is not None
                if worker.restart_at is not None:
                    if now >= worker.restart_at:
                        log.info("restarting gateway worker %d", worker.index)
                        self._spawn(worker)
                    continue
                status = worker.proc.poll()
                if status is None:
                    continue
                self._close_pipe(worker)
                worker.ready, worker.admin = False, None
                if now - worker.started_at >= STABLE_AFTER:
                    worker.failures = 0
                delay = min(self.restart_delay * 2.0**worker.failures, MAX_RESTART_DELAY)
                worker.failures += 1
                worker.restart_at = now + delay
                log.warning(
                    "gateway worker %d (pid %d) exited with status %s; restarting it in %.1fs",
                    worker.index,
                    worker.proc.pid,
                    status,
                    delay,
                )

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), then wait; kill what outlives the grace."""
        self._draining = True
        g = self.plan.gateway
        assert g is not None
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + g.grace + KILL_MARGIN
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "gateway worker pid %d still running after the grace: killing it", proc.pid
                )
                proc.kill()
                proc.wait()
        for worker in self.workers:
            self._close_pipe(worker)
            if worker.life is not None:
                os.close(worker.life)
                worker.life = None
        self._selector.close()

    def _ready_lines(self, admin_port: int | None) -> list[str]:
        g = self.plan.gateway
        assert g is not None
        lines = ready_lines(self.plan, self.http_port, self.tunnel_ports[0], admin_port)
        ports = ", ".join(str(p) for p in self.tunnel_ports)
        lines.append(f"  {len(self.workers)} workers; their tunnel ports: {ports}")
        return lines


def supervise(
    plan: Plan, argv: list[str], driver: str, restart_delay: float, receiver_wait: float = 10.0
) -> None:
    """Run ``plan``'s gateway as ``plan.gateway.workers`` worker processes (see module doc)."""
    Supervisor(plan, argv, driver, restart_delay, receiver_wait).run()
