"""Real servers for the TCP tests, each started in a temporary directory on a free loopback
port: PostgreSQL, redis-server, sshd. A missing binary skips the test with the reason
(.ci/run installs them when it runs as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .tcp_helpers import free_port

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _which(name: str, extra: list[Path] = ()) -> str | None:
    for d in extra:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )


def need(name: str, extra: list[Path] = ()) -> str:
    path = _which(name, extra)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: see .ci/run)")
    return path


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} in {timeout}s")


class Server:
    def __init__(self, argv: list[str], port: int, what: str, cwd: Path, user: str | None = None):
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        self.port = port
        self.log = open(cwd / f"{what}.log", "wb")  # noqa: SIM115 - closed in stop()
        if user is not None:
            shutil.chown(cwd / f"{what}.log", user)
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            _wait_port(port, self.proc, what)
        except RuntimeError:
            self.stop()
            raise

    cleanup: Path | None = None  # a directory of our own to remove (PostgreSQL as root)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)


def start_postgres(tmp: Path) -> Server:
    initdb = need("initdb", PG_BINS)
    postgres = need("postgres", PG_BINS)
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user, its own dir
        import tempfile

        user = "postgres"
        tmp = Path(tempfile.mkdtemp(prefix="anpx-pg-"))
        shutil.chown(tmp, user)
    data = tmp / "pgdata"
    init = subprocess.run(
        (["runuser", "-u", user, "--"] if user else [])
        + [initdb, "-D", str(data), "-U", "anpx", "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        cwd=tmp,
    )
    if init.returncode:
        raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-300:]}")
    port = free_port()
    argv = [postgres, "-D", str(data), "-p", str(port), "-k", str(tmp),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]  # fmt: skip
    server = Server(argv, port, "postgres", tmp, user)
    if user:
        server.cleanup = tmp
    return server


def start_redis(tmp: Path) -> Server:
    redis = need("redis-server")
    port = free_port()
    argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp)]  # fmt: skip
    return Server(argv, port, "redis", tmp)


class Sshd(Server):
    key: Path
    user: str


def start_sshd(tmp: Path) -> Sshd:
    sshd = need("sshd")
    keygen = need("ssh-keygen")
    need("ssh")
    for name in ("host", "client"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)],
            check=True,
            capture_output=True,
        )
    (tmp / "authorized_keys").write_bytes((tmp / "client.pub").read_bytes())
    (tmp / "authorized_keys").chmod(0o600)
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
        f"PidFile {tmp / 'sshd.pid'}\nPermitRootLogin prohibit-password\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    server = Sshd([sshd, "-D", "-e", "-f", str(config)], port, "sshd", tmp)
    server.key = tmp / "client"
    import getpass

    server.user = getpass.getuser()
    return server


def ssh_argv(server: Sshd, port: int, proxy: str | None, command: str) -> list[str]:
    argv = ["ssh", "-F", "/dev/null", "-i", str(server.key), "-p", str(port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"]  # fmt: skip
    if proxy:
        argv += ["-o", f"ProxyCommand={proxy}"]
    return [*argv, f"{server.user}@127.0.0.1", command]
