"""Processes under test: uvicorn (the direct baseline) and anpx gateway + receiver pairs.

Every process is started on 127.0.0.1, recorded in :data:`STARTED`, and stopped by
:func:`stop_all` (the runner calls it in a ``finally``; children also get SIGTERM from the
kernel if the runner itself dies, through ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APP = "bench.app:app"
DRIVERS = ("trio", "asyncio")
STARTED: list[subprocess.Popen] = []
_starts = 0


def _next_tag(name: str) -> str:
    """A fresh file-name prefix per start: logs are never mixed between runs of a target."""
    global _starts
    _starts += 1
    return f"{_starts:02d}-{name}"


_PR_SET_PDEATHSIG = 1
try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux: no parent-death signal, the finally clause still stops children
    _libc = None


def _die_with_parent() -> None:
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen:
    """Start ``argv`` in its own session (a Ctrl-C in the terminal reaches only the runner,
    which stops children in order), output to ``log``."""
    kwargs.setdefault("cwd", REPO)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            **kwargs,
        )
    STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(STARTED)):
        stop(proc)


# --- memory ------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in bytes, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid``, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemWatch:
    """Idle RSS before a load and peak RSS during it, for a set of named processes."""

    pids: dict[str, int]
    idle: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    reset: bool = True

    def start(self) -> None:
        for name, pid in self.pids.items():
            self.reset &= reset_peak(pid)
            self.idle[name] = proc_status(pid)["VmRSS"]

    def finish(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = proc_status(pid)["VmHWM"]

    def growth(self) -> dict[str, int]:
        return {name: self.peak[name] - self.idle[name] for name in self.pids}


# --- targets -----------------------------------------------------------------------------


class StartError(RuntimeError):
    pass


def _wait_ready(port: int, procs: list[subprocess.Popen], log: Path, timeout: float) -> None:
    """Until ``GET /small`` answers 200 (through the tunnel: the receiver is registered)."""
    deadline = time.monotonic() + timeout
    request = f"GET /small HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise StartError(f"{proc.args[-1]} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as sock:
            sock.settimeout(2)
            sock.sendall(request)
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.05)
    raise StartError(f"not ready on port {port} after {timeout}s; see {log}")


@dataclass
class Target:
    """One way to reach the app: ``direct`` or a gateway/receiver pairing."""

    name: str  # "direct" or "<gateway driver>/<receiver driver>"
    port: int = 0
    pids: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def direct(self) -> bool:
        return self.name == "direct"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_direct(
    logdir: Path,
    *,
    keepalive: int = 5,
    access_log: bool = False,
    http: str = "h11",
    loop: str = "asyncio",
) -> Target:
    """uvicorn serving the app on a free port (backlog 4096, as many as the kernel allows),
    with the given HTTP parser (``h11`` or ``httptools``) and event loop (``asyncio`` or
    ``uvloop``): named explicitly, because uvicorn's ``auto`` picks whatever is installed.

    Not ``--fd``: uvicorn takes an inherited socket for a Unix socket, and asyncio then
    leaves Nagle's algorithm on, which costs every small response a 40 ms delayed ACK.
    """
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", APP, "--host", HOST, "--port", str(port)]
    argv += ["--backlog", "4096", "--lifespan", "on", "--timeout-keep-alive", str(keepalive)]
    argv += ["--http", http, "--loop", loop]
    argv += ["--log-level", "info" if access_log else "warning"]
    if not access_log:
        argv.append("--no-access-log")
    log = logdir / f"{_next_tag('direct')}.log"
    proc = spawn(argv, log)
    target = Target("direct", port, {"uvicorn": proc.pid}, [proc])
    try:
        _wait_ready(port, [proc], log, 20)
    except BaseException:
        target.stop()
        raise
    return target


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """A TOML file: top-level keys (plain values) first, then one table per dict."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in sections.items() if not isinstance(v, dict)]
    for name, keys in sections.items():
        if not isinstance(keys, dict):
            continue
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _read_ports(log: Path, proc: subprocess.Popen, timeout: float) -> tuple[int, int]:
    """The HTTP and tunnel ports from the gateway's ready lines (it binds port 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        http = tunnel = None
        for line in log.read_text(errors="replace").splitlines():
            if "anpx gateway ready: open http://" in line:
                http = int(line.rsplit(":", 1)[1].strip("/ "))
            elif "receivers connect to ws://" in line:
                tunnel = int(line.rsplit(":", 1)[1].strip("/ "))
        if http and tunnel:
            return http, tunnel
        if proc.poll() is not None:
            raise StartError(f"gateway exited with {proc.returncode}; see {log}")
        time.sleep(0.05)
    raise StartError(f"gateway not ready after {timeout}s; see {log}")


def start_tunnel(
    gateway: str,
    receiver: str,
    logdir: Path,
    *,
    gateway_keys: dict[str, Any] | None = None,
    receiver_keys: dict[str, Any] | None = None,
    access_log: bool = False,
    wrap: dict[str, list[str]] | None = None,
    loop: str | None = None,
) -> Target:
    """``python -m anpx_<gateway> gateway`` and ``python -m anpx_<receiver> receiver``
    serving the app in-process, tied together on free ports. ``wrap`` puts interpreter
    arguments before ``-m`` per process, e.g. ``{"gateway": ["-m", "cProfile", "-o", f]}``."""
    wrap = wrap or {}
    name = f"{gateway}/{receiver}"
    tag = _next_tag(f"{gateway}-gw_{receiver}-rc")
    level = "INFO" if access_log else "WARNING"
    config = write_config(
        logdir / f"{tag}.toml",
        {
            "logging": {"level": level},
            "gateway": {
                "port": 0,
                "wss_port": 0,
                "admin_port": 0,
                "shutdown_grace": 0.0,
                **(gateway_keys or {}),
            },
            "receiver": {"shutdown_grace": 0.0, **(receiver_keys or {})},
            **({"loop": loop} if loop else {}),
        },
    )
    target = Target(name)
    try:
        log = logdir / f"{tag}.gateway.log"
        argv = [sys.executable, *wrap.get("gateway", []), "-m", f"anpx_{gateway}", "gateway"]
        gw = spawn([*argv, "-c", str(config)], log)
        target.procs.append(gw)
        target.pids["gateway"] = gw.pid
        target.port, tunnel = _read_ports(log, gw, 20)
        rlog = logdir / f"{tag}.receiver.log"
        argv = [sys.executable, *wrap.get("receiver", []), "-m", f"anpx_{receiver}", "receiver"]
        argv += ["-c", str(config)]
        argv += ["--gateway-url", f"ws://{HOST}:{tunnel}/", "--local-app", APP]
        rc = spawn(argv, rlog)
        target.procs.append(rc)
        target.pids["receiver"] = rc.pid
        _wait_ready(target.port, target.procs, rlog, 20)
    except BaseException:
        target.stop()
        raise
    return target


def start_target(name: str, logdir: Path, **kwargs: Any) -> Target:
    if name == "direct":
        keepalive = int((kwargs.get("gateway_keys") or {}).get("keepalive_timeout", 5))
        return start_direct(logdir, keepalive=keepalive, access_log=kwargs.get("access_log", False))
    gateway, receiver = name.split("/")
    return start_tunnel(gateway, receiver, logdir, **kwargs)


@contextlib.contextmanager
def running(names: list[str], logdir: Path, **kwargs: Any) -> Iterator[list[Target]]:
    """Start every named target, yield them, stop them all (also on error or Ctrl-C)."""
    targets: list[Target] = []
    try:
        for name in names:
            targets.append(start_target(name, logdir, **kwargs))
        yield targets
    finally:
        for target in reversed(targets):
            target.stop()


def raise_fd_limit(needed: int) -> int:
    """Raise this process's (and so its children's) open-file limit towards ``needed``."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(max(soft, needed), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C so the runner's ``finally`` stops every child. SIGINT gets
    Python's handler even when started in the background by a shell that ignores it."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":  # manual check: start one pairing and print where it listens
    with tempfile.TemporaryDirectory() as d, running([sys.argv[1]], Path(d)) as (t,):
        print(t.name, t.port, t.pids, proc_status(next(iter(t.pids.values()))))
    os._exit(0)
