"""anpx_core stays sans-IO, and its wire codec stays standard-library only.

Checked on the source with ``ast`` (every module, every form of import, every use of a
clock), and for the codec by importing it in a fresh interpreter that cannot see
site-packages at all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "anpx_core"
CORE_MODULES = sorted(CORE.rglob("*.py"))

#: I/O, threads and event loops belong to the drivers; process concerns (the environment,
#: randomness, ids, log files) to the host layer; apps behind the receiver (command mode) to
#: their own package. The core is handed ``now``, ids, nonces and jitter instead.
FORBIDDEN = frozenset(
    {
        "os",
        "sys",
        "time",
        "random",
        "uuid",
        "secrets",
        "socket",
        "ssl",
        "select",
        "selectors",
        "threading",
        "asyncio",
        "trio",
        "anyio",
        "sniffio",
        "subprocess",
        "logging.handlers",
        "anpx_host",
        "anpx_trio",
        "anpx_asyncio",
        "anpx_command",
    }
)
#: Exceptions: (module file, forbidden import) -> why it is allowed. Keep this short.
ALLOWED: dict[tuple[str, str], str] = {}
#: Modules that can tell the time; anpx_core is given ``now`` instead.
CLOCK_MODULES = frozenset({"time", "datetime"})
#: Calls that read a clock whatever they are called on.
CLOCK_CALLS = frozenset(
    {
        "time_ns",
        "monotonic",
        "monotonic_ns",
        "perf_counter",
        "perf_counter_ns",
        "process_time",
        "utcnow",
        "current_time",
    }
)
#: Calls that read a clock when called on these owners (``pump.now()`` is the driver's
#: clock handed in, which is fine; ``datetime.now()`` is not).
CLOCK_CALLS_ON = {
    "now": {"datetime", "date"},
    "today": {"datetime", "date"},
    "time": {"time", "loop", "get_running_loop()", "get_event_loop()"},
}
CODEC = ("errors", "frames", "meta", "messages")


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """Every module imported in ``tree`` (absolute or from-imports, literal dynamic imports),
    as its top-level name and, for a submodule, its full dotted name too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(name, node.lineno) for a in node.names for name in _names(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(name, node.lineno) for name in _names(node.module)]
            # `from logging import handlers` imports logging.handlers
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            # a literal name only: apploader imports the user's app by a computed name
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found += [(name, node.lineno) for name in _names(arg.value)]
    return found


def _names(dotted: str) -> list[str]:
    top = dotted.split(".")[0]
    return [top] if top == dotted else [top, dotted]


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id == "__import__"
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def clock_reads(tree: ast.AST) -> list[tuple[str, int]]:
    """Imports of a clock module and calls like ``x.monotonic()`` / ``x.now()``."""
    found = [(f"import {m}", line) for m, line in imported_modules(tree) if m in CLOCK_MODULES]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in CLOCK_MODULES:
            found.append((f"from {node.module} import ...", node.lineno))
        func = getattr(node, "func", None)
        if not isinstance(func, ast.Attribute):
            continue
        owner = ast.unparse(func.value).rsplit(".", 1)[-1]
        if func.attr in CLOCK_CALLS or owner in CLOCK_CALLS_ON.get(func.attr, ()):
            found.append((ast.unparse(func), node.lineno))
    return found


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.AST]:
    assert CORE_MODULES, "no anpx_core sources found"
    return {
        str(path.relative_to(CORE)): ast.parse(path.read_text(), str(path)) for path in CORE_MODULES
    }


def test_core_imports_no_io_threads_loops_or_process_state(trees: dict[str, ast.AST]) -> None:
    offenders = [
        f"{name}:{line} imports {module}"
        for name, tree in trees.items()
        for module, line in imported_modules(tree)
        if module in FORBIDDEN and (name, module) not in ALLOWED
    ]
    assert not offenders, offenders


def test_every_allowed_exception_is_still_needed(trees: dict[str, ast.AST]) -> None:
    used = {(name, module) for name, tree in trees.items() for module, _ in imported_modules(tree)}
    assert set(ALLOWED) <= used, f"stale exceptions: {set(ALLOWED) - used}"


def test_core_never_reads_the_clock(trees: dict[str, ast.AST]) -> None:
    offenders = [
        f"{name}:{line} {what}" for name, tree in trees.items() for what, line in clock_reads(tree)
    ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "source",
    [
        "import socket",
        "import asyncio.events",
        "from trio import sleep",
        "from anyio.abc import Event",
        "import os, threading as t",
        "importlib.import_module('selectors')",
        "__import__('ssl')",
        "import logging.handlers",
        "from logging import handlers",
        "from logging.handlers import RotatingFileHandler",
        "from os import urandom",
        "import uuid",
    ],
)
def test_the_import_check_sees_every_form(source: str) -> None:
    modules = {module for module, _ in imported_modules(ast.parse(source))}
    assert modules & FORBIDDEN


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "from time import monotonic",
        "import datetime",
        "from datetime import datetime",
        "t = loop.time()",
        "clock.monotonic()",
        "x = dt.datetime.now()",
        "date.today()",
        "asyncio.get_running_loop().time()",
        "time.monotonic_ns()",
        "trio.current_time()",
    ],
)
def test_the_clock_check_sees_every_form(source: str) -> None:
    assert clock_reads(ast.parse(source))


@pytest.mark.parametrize("source", ["pump.now()", "self.now()", "x.time", "session.today"])
def test_the_clock_check_allows_a_clock_handed_in(source: str) -> None:
    assert not clock_reads(ast.parse(source))


def test_codec_imports_only_the_standard_library() -> None:
    # -I: isolated (no user site, no PYTHONPATH); -S: no site module, so no site-packages;
    # the repository alone is put on sys.path. Any third-party import fails here.
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"for name in {CODEC!r}:\n"
        "    __import__('anpx_core.' + name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'h11', 'wsproto', 'attrs'})\n"
        "assert not any('site-packages' in p for p in sys.path), sys.path\n"
        "print('ok', bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok []"


def test_the_isolated_interpreter_really_hides_third_party_packages() -> None:
    # the check above proves something only if a third-party import fails in that setting
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import anpx_core.http1"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr and "h11" in result.stderr


def test_importing_the_core_loads_no_io_thread_or_loop_module() -> None:
    # os, sys and time are loaded by the interpreter itself; the source check covers them
    watched = ("socket", "selectors", "ssl", "threading", "asyncio", "trio", "anyio", "sniffio",
               "subprocess", "logging.handlers", "anpx_host", "anpx_trio", "anpx_asyncio",
               "anpx_command")  # fmt: skip
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import anpx_core\n"
        f"print(sorted(m for m in {watched!r} if m in sys.modules and m not in before))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
