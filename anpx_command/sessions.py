"""Sessions: one executor process each, its output in an :class:`OutputLog`.

A session's process runs in a new process group (``start_new_session``), so cancelling
it, a time limit or an output cap kills the whole tree the executor spawned, and when
the executor exits, whatever it left behind in its group is killed too. POSIX only.
Sessions live in the app, not in a request or a tunnel: they outlast both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from .executors import Executor, Request, RequestError
from .outputlog import OutputLog

__all__ = ["LimitReached", "Limits", "NotFound", "Session", "SessionManager", "Unavailable"]

log = logging.getLogger("anpx.command")
READ_SIZE = 64 * 1024


class NotFound(LookupError):
    pass


class LimitReached(RuntimeError):
    """Too many sessions; ``str`` is the short reason."""


class Unavailable(RuntimeError):
    """The manager is not running (no lifespan) or is shutting down."""


class Conflict(RuntimeError):
    """The session is not in a state for this (input to a closed stdin)."""


@dataclass(frozen=True, slots=True)
class Limits:
    roots: tuple[str, ...]
    max_sessions: int = 4
    max_retained: int = 100
    time_limit: float = 3600.0
    max_output_bytes: int = 16 * 1024 * 1024
    env_allow: tuple[str, ...] = ("PATH", "HOME", "LANG")
    cancel_grace: float = 5.0  # SIGTERM, then SIGKILL after this long


@dataclass(eq=False)
class Session:
    id: str
    executor: str
    argv: list[str]
    project_path: str
    who: str
    interactive: bool
    log: OutputLog
    created: float = field(default_factory=time.time)
    ended: float | None = None
    status: str = "starting"  # running, exited, cancelled, timed_out, output_limit, failed
    exit_code: int | None = None
    pid: int | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    _process: anyio.abc.Process | None = None
    _stop_reason: str | None = None
    _exited: anyio.Event = field(default_factory=anyio.Event)
    _input_lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "executor": self.executor,
            "argv": self.argv,
            "project_path": self.project_path,
            "status": self.status,
            "exit_code": self.exit_code,
            "interactive": self.interactive,
            "created": self.created,
            "ended": self.ended,
            "output_bytes": len(self.log),
            "output_truncated": self.log.truncated,
        }


Audit = Callable[..., None]


class SessionManager:
    def __init__(self, executors: Mapping[str, Executor], limits: Limits, audit: Audit) -> None:
        self.executors = dict(executors)
        self.limits = limits
        self.audit = audit
        self.sessions: dict[str, Session] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._roots = [os.path.realpath(os.path.expanduser(r)) for r in limits.roots]

    # --- lifetime ---------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the sessions' task group until cancelled; then stop every process tree."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None  # each session's supervisor killed its process tree on the way out

    # --- queries ----------------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        s = self.sessions.get(session_id)
        if s is None:
            raise NotFound(session_id)
        return s

    def list(self) -> list[Session]:
        return sorted(self.sessions.values(), key=lambda s: s.created)

    def resolve_project(self, path: str) -> str:
        """The real path of ``path`` if it is a directory under a configured root."""
        if not isinstance(path, str) or not path or "\0" in path:
            raise RequestError("project_path: expected a path")
        if not os.path.isabs(os.path.expanduser(path)):
            raise RequestError("project_path: expected an absolute path")
        real = os.path.realpath(os.path.expanduser(path))
        if not any(real == root or real.startswith(root.rstrip("/") + "/") for root in self._roots):
            raise PermissionError("project_path is outside the configured roots")
        if not os.path.isdir(real):
            raise RequestError("project_path: no such directory")
        return real

    # --- actions ----------------------------------------------------------------------

    async def start(
        self,
        executor: str,
        prompt: str,
        project_path: str,
        *,
        who: str,
        resume: str | None = None,
        interactive: bool = False,
    ) -> Session:
        if self._tg is None:
            raise Unavailable("command mode is not running")
        ex = self.executors.get(executor)
        if ex is None:
            raise RequestError(f"executor: unknown, expected one of {', '.join(self.executors)}")
        if "\0" in prompt:
            raise RequestError("prompt: must not contain NUL")
        try:
            real = self.resolve_project(project_path)
        except PermissionError:
            self.audit("refused", who=who, executor=executor, project_path=project_path)
            raise
        argv = ex.argv(Request(prompt, real, resume))
        if sum(s.running for s in self.sessions.values()) >= self.limits.max_sessions:
            raise LimitReached(f"at most {self.limits.max_sessions} sessions may run at once")
        self._make_room()
        s = Session(
            uuid.uuid4().hex,
            executor,
            argv,
            real,
            who,
            interactive,
            OutputLog(self.limits.max_output_bytes),
        )
        env = {k: os.environ[k] for k in self.limits.env_allow if k in os.environ}
        env["PWD"] = real
        try:
            process = await anyio.open_process(
                argv,
                cwd=real,
                env=env,
                stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self.audit("failed", who=who, session=s.id, argv=argv, cwd=real, error=exc.strerror)
            raise RequestError(f"executor {executor} could not be started") from None
        s._process, s.pid, s.status = process, process.pid, "running"
        self.sessions[s.id] = s
        self.audit(
            "start", who=who, session=s.id, executor=executor, argv=argv, cwd=real, pid=s.pid
        )
        self._tg.start_soon(self._supervise, s, process)
        return s

    async def cancel(self, session_id: str, *, who: str) -> Session:
        s = self.get(session_id)
        if s.running:
            self.audit("cancel", who=who, session=s.id, pid=s.pid)
            await self._stop(s, "cancelled")
        return s

    async def delete(self, session_id: str, *, who: str) -> None:
        s = self.get(session_id)
        if s.running:
            await self._stop(s, "cancelled")
        self.sessions.pop(s.id, None)
        self.audit("delete", who=who, session=s.id)

    async def send_input(self, session_id: str, data: bytes, *, eof: bool = False) -> Session:
        s = self.get(session_id)
        process = s._process
        if not s.interactive or process is None or process.stdin is None:
            raise Conflict("this session does not read input (start it with interactive: true)")
        async with s._input_lock:
            if not s.running:
                raise Conflict("the session has ended")
            try:
                if data:
                    await process.stdin.send(data)
                if eof:
                    await process.stdin.aclose()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                raise Conflict("the session's input is closed") from None
        return s

    # --- internals --------------------------------------------------------------------

    def _make_room(self) -> None:
        while len(self.sessions) >= self.limits.max_retained:
            finished = [s for s in self.list() if not s.running]
            if not finished:
                raise LimitReached(f"at most {self.limits.max_retained} sessions are kept")
            del self.sessions[finished[0].id]

    async def _stop(self, s: Session, reason: str) -> None:
        """Stop the session's process tree and wait until the session has ended."""
        self._request_stop(s, reason)
        await s.done.wait()

    def _request_stop(self, s: Session, reason: str) -> None:
        if s._stop_reason is None and s.running:
            s._stop_reason = reason
            # In the manager's task group: a client going away does not abort the kill.
            self._tg.start_soon(self._terminate, s)  # type: ignore[union-attr]

    async def _terminate(self, s: Session) -> None:
        """SIGTERM to the process group; SIGKILL if the executor outlives the grace."""
        _signal_group(s.pid or 0, signal.SIGTERM)
        with anyio.move_on_after(self.limits.cancel_grace):
            await s._exited.wait()
        if not s._exited.is_set():
            _signal_group(s.pid or 0, signal.SIGKILL)

    async def _supervise(self, s: Session, process: anyio.abc.Process) -> None:
        pumped = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, s, process, pumped)
                with anyio.move_on_after(self.limits.time_limit) as timer:
                    await process.wait()
                if timer.cancelled_caught:
                    self._request_stop(s, "timed_out")
                    await process.wait()
                s._exited.set()
                # The executor is gone: what it left in its group goes too, so the pipe
                # closes; a process that escaped the group cannot hold the session open.
                _signal_group(process.pid, signal.SIGKILL)
                with anyio.move_on_after(self.limits.cancel_grace):
                    await pumped.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                # Shutting down or not, nothing of the session outlives it: a session that
                # reads as ended has no process left in its group.
                _signal_group(process.pid, signal.SIGKILL)
                await process.aclose()
                with anyio.move_on_after(self.limits.cancel_grace):
                    await _group_gone(process.pid)
            s._exited.set()
            s.exit_code = process.returncode
            s.status = s._stop_reason or "exited"
            s.ended = time.time()
            s.log.close()
            s.done.set()
            self.audit("end", who=s.who, session=s.id, status=s.status, exit_code=s.exit_code)

    async def _pump(self, s: Session, process: anyio.abc.Process, pumped: anyio.Event) -> None:
        assert process.stdout is not None
        try:
            while True:
                chunk = await process.stdout.receive(READ_SIZE)
                # Beyond the cap the rest is dropped and the process stopped; reading goes
                # on so it is not blocked on a full pipe meanwhile.
                if not s.log.append(chunk):
                    self._request_stop(s, "output_limit")
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            pumped.set()


async def _group_gone(pgid: int) -> None:
    """Return once no process is left in the group (SIGKILL is delivered asynchronously)."""
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        await anyio.sleep(0.005)


def _signal_group(pgid: int, sig: int) -> None:
    if pgid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
