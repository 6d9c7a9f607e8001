"""The reference implementation (anp-proxy at 62776d6) as a benchmark target.

Its source tree is found at ``../shared/peers/anp-proxy-62776d6`` from the project root (a git
worktree may sit deeper, so every ancestor's ``shared/`` is tried) or at
``$ANPX_REFERENCE_DIR``. It runs from that tree as ``python anp_proxy.py --config FILE``,
through ``reference_unlimited.py`` (which lifts its hard-coded rate limit in memory), in a
virtual environment of its own holding the versions its ``uv.lock`` names, installed from
PyPI with pip. The environment is built once and cached under
``~/.cache/anpx-bench/<hash of uv.lock>-py<version>`` (``$ANPX_BENCH_CACHE`` overrides the
parent directory).

    python bench/reference.py          # build the environment ahead of a run, print its Python
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import HOST, REPO, StartError, Target, _next_tag, _wait_ready, free_port, spawn

NAME = "anp-proxy-62776d6"
WRAPPER = Path(__file__).resolve().with_name("reference_unlimited.py")


def find_reference() -> Path | None:
    """The reference's source tree, or None if it is not there."""
    given = os.environ.get("ANPX_REFERENCE_DIR")
    candidates = [Path(given)] if given else [p / "shared" / "peers" / NAME for p in REPO.parents]
    return next((p for p in candidates if (p / "anp_proxy.py").is_file()), None)


def locked_requirements(lock: Path) -> list[str]:
    """``name==version`` for every package the root project needs at run time, as uv.lock
    resolved them (following extras; skipping edges whose marker is false here)."""
    try:
        from packaging.markers import Marker
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.markers import Marker

    packages = {p["name"]: p for p in tomllib.loads(lock.read_text())["package"]}
    root = next(p for p in packages.values() if p.get("source", {}).get("editable") == ".")
    pins: dict[str, str] = {}
    todo, seen = [(root["name"], ())], set()
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        name, extras = item
        package = packages[name]
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            if "marker" not in dep or Marker(dep["marker"]).evaluate():
                todo.append((dep["name"], tuple(dep.get("extra", ()))))
        if package is not root:
            pins[name] = package["version"]
    return sorted(f"{name}=={version}" for name, version in pins.items())


def environment(tree: Path) -> Path:
    """The Python of the reference's virtual environment, built on first use.

    A file lock serialises concurrent builders; a failed build leaves no ``complete`` mark
    and is redone from scratch next time.
    """
    lock = tree / "uv.lock"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    base = Path(os.environ.get("ANPX_BENCH_CACHE", Path.home() / ".cache" / "anpx-bench"))
    home = base / f"{digest}-py{sys.version_info[0]}{sys.version_info[1]}"
    home.mkdir(parents=True, exist_ok=True)
    python = home / "venv" / "bin" / "python"
    with open(home / "lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if (home / "complete").exists():
            return python
        print(f"building the reference's environment in {home} (once)", flush=True)
        venv.EnvBuilder(clear=True, with_pip=True).create(home / "venv")
        requirements = home / "requirements.txt"
        requirements.write_text("\n".join(locked_requirements(lock)) + "\n")
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONSTRAINT": ""}
        argv = [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(requirements)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode:
            raise StartError(f"installing the reference's dependencies failed:\n{done.stderr}")
        (home / "complete").write_text(requirements.read_text())
    return python


def _config(path: Path, mode: str, http_port: int, wss_port: int) -> Path:
    """Loopback, TLS and DID-WBA off (its README's way), logs at WARNING like ours, our
    benchmark app in-process in the receiver."""
    path.write_text(
        f"""mode = "{mode}"
[logging]
level = "WARNING"
[gateway]
host = "{HOST}"
port = {http_port}
wss_host = "{HOST}"
wss_port = {wss_port}
max_connections = 10000
timeout = 120.0
[gateway.tls]
enabled = false
[gateway.auth]
did_wba_enabled = false
[receiver]
gateway_url = "ws://{HOST}:{wss_port}"
local_app_module = "bench.app:app"
reconnect_delay = 1.0
[receiver.tls]
enabled = false
[receiver.auth]
did_wba_enabled = false
"""
    )
    return path


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"the reference's gateway exited with {proc.returncode}; see {log}")
        try:
            socket.create_connection((HOST, port), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"the reference's gateway is not listening after {timeout}s; see {log}")


def start_reference(logdir: Path, **_: Any) -> Target:
    """The reference's gateway and receiver as two processes, ready when ``/small`` answers."""
    tree = find_reference()
    if tree is None:
        raise StartError(f"the reference is not at ../shared/peers/{NAME} nor $ANPX_REFERENCE_DIR")
    python = environment(tree)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)]), "NO_COLOR": "1"}
    http, wss = free_port(), free_port()
    tag = _next_tag("reference")
    target = Target("reference", http)
    try:
        for role in ("gateway", "receiver"):
            config = _config(logdir / f"{tag}.{role}.toml", role, http, wss)
            log = logdir / f"{tag}.{role}.log"
            argv = [str(python), str(WRAPPER), "--config", str(config)]
            proc = spawn(argv, log, env=env, cwd=tree)
            target.procs.append(proc)
            target.pids[role] = proc.pid
            if role == "gateway":  # its receiver gives up if the first connection fails
                _wait_listening(wss, proc, log, 60)
        _wait_ready(http, target.procs, logdir / f"{tag}.receiver.log", 60)
    except BaseException:
        target.stop()
        raise
    return target


if __name__ == "__main__":
    found = find_reference()
    if found is None:
        sys.exit(f"the reference is not at ../shared/peers/{NAME} nor $ANPX_REFERENCE_DIR")
    print(environment(found))
