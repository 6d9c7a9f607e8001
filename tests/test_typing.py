"""The packages type-check under ``mypy --strict`` with zero errors (configuration in
pyproject.toml). Skipped where mypy is not installed (it is in the ``test`` extra)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("anpx_core", "anpx_host", "anpx_trio", "anpx_asyncio", "anpx_command")
_ERROR = re.compile(r"^(?P<file>[^:\s]+\.py):\d+: error: (?P<message>.*)$")


def strict_errors() -> list[str]:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *PACKAGES],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr or result.stdout  # 2: mypy itself failed
    return [line for line in result.stdout.splitlines() if _ERROR.match(line)]


def counted(errors: list[str]) -> list[str]:
    out = []
    for line in errors:
        m = _ERROR.match(line)
        assert m is not None
        out.append(line)
    return out


def test_the_packages_type_check_strictly() -> None:
    errors = counted(strict_errors())
    assert errors == [], "\n".join(errors)


def test_the_packages_ship_their_type_hints() -> None:
    for package in PACKAGES:
        assert (REPO / package / "py.typed").is_file(), f"{package} lacks py.typed (PEP 561)"
