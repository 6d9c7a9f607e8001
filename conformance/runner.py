"""Run the conformance vectors against an adapter (standard library only).

An adapter answers one JSON request with one JSON object (see README.md). It
is either anpx_core in-process or any command speaking the adapter protocol
over stdin/stdout, one JSON object per line. Output: one ``FAIL name: why``
line per failing vector, then ``N passed, N failed``; the exit status is 0
only when nothing failed (2 when the run could not start).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
DEFAULT_TIMEOUT = 10.0
_SNIPPET = 24  # characters of context shown around a difference
_HEX = re.compile("(?:[0-9a-f]{2})*")


class AdapterFailure(Exception):
    """The adapter gave no usable answer (crashed, hung, or wrote garbage)."""


class SetupError(Exception):
    """The run cannot start: unreadable vectors or an adapter that will not launch."""


@dataclass(frozen=True, slots=True)
class Vector:
    name: str
    description: str
    request: dict
    expect: dict
    source: str


Adapter = Callable[[dict], Any]


# --- vectors -------------------------------------------------------------------------------


def load_vectors(directory: Path) -> list[Vector]:
    """Every vector of every ``*.json`` file in ``directory``, files in name order."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise SetupError(f"no *.json vector files in {directory}")
    vectors: list[Vector] = []
    seen: set[str] = set()
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SetupError(f"{path}: {exc}") from None
        items = data.get("vectors") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise SetupError(f"{path}: expected {{'vectors': [...]}} or a list")
        for i, item in enumerate(items):
            where = f"{path.name}[{i}]"
            if not isinstance(item, dict) or not all(
                isinstance(item.get(k), t)
                for k, t in (("name", str), ("request", dict), ("expect", dict))
            ):
                raise SetupError(f"{where}: a vector needs a name, a request and an expect object")
            if item["name"] in seen:
                raise SetupError(f"{where}: duplicate vector name {item['name']!r}")
            seen.add(item["name"])
            vectors.append(
                Vector(
                    item["name"],
                    str(item.get("description", "")),
                    item["request"],
                    item["expect"],
                    path.name,
                )
            )
    return vectors


# --- comparing answers ---------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _diff(expect: Any, got: Any, path: str) -> str | None:
    """Where ``got`` first departs from ``expect``, or None when equal."""
    if expect == got and type(expect) is type(got):
        return None
    if isinstance(expect, dict) and isinstance(got, dict):
        for key in expect:
            if key not in got:
                return f"{path}.{key} missing"
            found = _diff(expect[key], got[key], f"{path}.{key}")
            if found:
                return found
        extra = sorted(set(got) - set(expect))
        return f"{path} has unexpected key(s) {', '.join(map(str, extra))}"
    if isinstance(expect, list) and isinstance(got, list):
        for i, (e, g) in enumerate(zip(expect, got, strict=False)):
            found = _diff(e, g, f"{path}[{i}]")
            if found:
                return found
        return f"{path} has {len(got)} item(s), expected {len(expect)}"
    if isinstance(expect, str) and isinstance(got, str):
        i = next(
            (i for i, (a, b) in enumerate(zip(expect, got, strict=False)) if a != b),
            min(len(expect), len(got)),
        )
        if _HEX.fullmatch(expect) and _HEX.fullmatch(got):  # wire bytes: speak in bytes
            i -= i % 2
            where, size = f"at byte {i // 2}", f"{len(expect) // 2} vs {len(got) // 2} bytes"
        else:
            where, size = f"at char {i}", f"{len(expect)} vs {len(got)} chars"
        lo = max(0, i - 8)
        return (
            f"{path} differs {where} ({size}): expected ...{expect[lo : i + _SNIPPET]}..., "
            f"got ...{got[lo : i + _SNIPPET]}..."
        )
    return f"{path}: expected {_short(expect)}, got {_short(got)}"


def check(expect: dict, got: Any) -> str | None:
    """Why ``got`` does not satisfy ``expect`` (None when it does).

    A failure vector expects ``{"error": code}`` and only the code is compared;
    a success vector expects the exact answer.
    """
    if not isinstance(got, dict):
        return f"answer is not a JSON object: {_short(got)}"
    if "error" in expect:
        if "error" not in got:
            return f"expected error {expect['error']!r}, got {_short(got)}"
        if got["error"] != expect["error"]:
            detail = f" ({_short(got['detail'])})" if "detail" in got else ""
            return f"expected error {expect['error']!r}, got error {got['error']!r}{detail}"
        return None
    if "error" in got and "error" not in expect:
        detail = f" ({_short(got['detail'])})" if "detail" in got else ""
        return f"expected {_short(expect, 40)}, got error {got['error']!r}{detail}"
    return _diff(expect, got, "answer")


# --- adapters ------------------------------------------------------------------------------


class InProcessAdapter:
    """anpx_core's adapter, called directly; answers pass through JSON like on a pipe."""

    def __init__(self) -> None:
        from anpx_host.adapter import handle  # only this mode needs anpx_core

        self._handle = handle

    def __call__(self, request: dict) -> Any:
        try:
            return json.loads(json.dumps(self._handle(request)))
        except Exception as exc:  # a crash is this vector's failure, not the run's
            raise AdapterFailure(f"adapter raised {exc!r}") from None

    def close(self) -> None:
        pass


class SubprocessAdapter:
    """An adapter command: one JSON line in, one JSON line out, each with a timeout.

    After a hang or a crash the process is killed and restarted for the next
    vector, since the line stream can no longer be trusted.
    """

    def __init__(self, argv: list[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        if not argv:
            raise SetupError("--impl is an empty command")
        self.argv = argv
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[bytes | None] = queue.Queue()

    def _start(self) -> subprocess.Popen[bytes]:
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as exc:
            raise SetupError(f"cannot start {shlex.join(self.argv)}: {exc}") from None
        lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc, lines), daemon=True).start()
        self._proc, self._lines = proc, lines
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen[bytes], lines: queue.Queue[bytes | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # end of output

    def __call__(self, request: dict) -> Any:
        proc = self._proc or self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(request).encode("ascii") + b"\n")
            proc.stdin.flush()
        except OSError:
            self.close()
            raise AdapterFailure(f"adapter exited (status {proc.returncode})") from None
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            self.close()
            raise AdapterFailure(f"no answer within {self.timeout:g} s") from None
        if line is None:
            self.close()
            raise AdapterFailure(f"adapter exited (status {proc.returncode})")
        try:
            return json.loads(line)
        except ValueError:
            text = _short(line.decode("utf-8", "replace"))
            raise AdapterFailure(f"answer is not JSON: {text}") from None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):  # already gone
            proc.stdin.close()
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- running -------------------------------------------------------------------------------


def run_vector(vector: Vector, adapter: Adapter) -> str | None:
    """Why the vector failed, or None when it passed."""
    try:
        got = adapter(vector.request)
    except AdapterFailure as exc:
        return str(exc)
    return check(vector.expect, got)


def run(vectors: list[Vector], adapter: Adapter) -> list[tuple[Vector, str | None]]:
    return [(vector, run_vector(vector, adapter)) for vector in vectors]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance", description="Run ANPX conformance vectors."
    )
    parser.add_argument(
        "--impl", metavar="CMD", help="adapter command (shell-split); default: anpx_core in-process"
    )
    parser.add_argument(
        "--vectors", metavar="DIR", type=Path, default=VECTORS_DIR, help="vector directory"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("-k", metavar="TEXT", help="run only vectors whose name contains TEXT")
    args = parser.parse_args(argv)
    adapter: InProcessAdapter | SubprocessAdapter | None = None
    try:
        vectors = load_vectors(args.vectors)
        if args.k:
            vectors = [v for v in vectors if args.k in v.name]
            if not vectors:
                raise SetupError(f"no vector name contains {args.k!r}")
        adapter = (
            SubprocessAdapter(shlex.split(args.impl), args.timeout)
            if args.impl
            else InProcessAdapter()
        )
        passed = failed = 0
        for vector in vectors:
            why = run_vector(vector, adapter)
            if why is None:
                passed += 1
            else:
                failed += 1
                print(f"FAIL {vector.name}: {why}".replace("\n", " "), flush=True)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if adapter is not None:
            adapter.close()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0
