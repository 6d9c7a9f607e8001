"""The v1 reference implementation (anp-proxy at 62776d6) as a live peer for interop tests.

It is found at ``../shared/peers/anp-proxy-62776d6`` from the project root (CI lays shared/
beside the checkout; a git worktree may sit one level deeper, so every ancestor's ``shared/``
is tried) or at ``$ANPX_REFERENCE_DIR``. Its dependencies are installed from PyPI, at the
versions its uv.lock names, into a virtual environment of their own, cached under
``~/.cache/anpx-interop/<hash of uv.lock>`` (``$ANPX_INTEROP_CACHE`` overrides the parent).

Run ``python tests/v1ref.py`` to build the environment ahead of the tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
NAME = "anp-proxy-62776d6"


def find_reference() -> Path | None:
    """The reference's source tree, or None where shared/ is absent."""
    given = os.environ.get("ANPX_REFERENCE_DIR")
    if given:
        path = Path(given)
        return path if (path / "anp_proxy.py").is_file() else None
    for parent in ROOT.parents:
        path = parent / "shared" / "peers" / NAME
        if (path / "anp_proxy.py").is_file():
            return path
    return None


def lock_requirements(lock: Path) -> list[str]:
    """``name==version`` for the runtime closure of the root package in a uv.lock.

    Markers on each edge are evaluated for this interpreter; extras are followed.
    """
    try:
        from packaging.markers import Marker
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.markers import Marker

    data = tomllib.loads(lock.read_text())
    packages = {p["name"]: p for p in data["package"]}
    root = next(p for p in data["package"] if p.get("source", {}).get("editable") == ".")
    pinned: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(root["name"], ())]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        pkg = packages[name]
        edges = list(pkg.get("dependencies", []))
        for extra in extras:
            edges += pkg.get("optional-dependencies", {}).get(extra, [])
        for dep in edges:
            marker = dep.get("marker")
            if marker and not Marker(marker).evaluate():
                continue
            todo.append((dep["name"], tuple(dep.get("extra", ()))))
        if pkg is not root:
            pinned[name] = pkg["version"]
    return sorted(f"{n}=={v}" for n, v in pinned.items())


def cache_dir(lock: Path) -> Path:
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    base = Path(os.environ.get("ANPX_INTEROP_CACHE", Path.home() / ".cache" / "anpx-interop"))
    return base / f"{digest}-py{sys.version_info[0]}{sys.version_info[1]}"


def ensure_env(reference: Path) -> Path:
    """The Python of a virtual environment with the reference's locked dependencies.

    Built once per uv.lock (a lock file serialises concurrent builders); a failed build leaves
    no completion mark and is retried from scratch next time. Raises RuntimeError with pip's
    output when the install fails.
    """
    lock = reference / "uv.lock"
    home = cache_dir(lock)
    home.mkdir(parents=True, exist_ok=True)
    python = home / "venv" / "bin" / "python"
    done = home / "complete"
    with open(home / "lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if done.exists():
            return python
        venv.EnvBuilder(clear=True, with_pip=True).create(home / "venv")
        requirements = home / "requirements.txt"
        requirements.write_text("\n".join(lock_requirements(lock)) + "\n")
        env = {**os.environ, "PIP_CONSTRAINT": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(requirements)],
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise RuntimeError(f"installing the reference's dependencies failed:\n{result.stderr}")
        done.write_text("\n".join(lock_requirements(lock)) + "\n")
        return python


if __name__ == "__main__":
    ref = find_reference()
    if ref is None:  # not an error: the interop tests skip, saying so
        print(f"the reference is not at ../shared/peers/{NAME} nor $ANPX_REFERENCE_DIR")
    else:
        print(ensure_env(ref))
