"""Logging per [logging]: level, size-rotated file, one access line per request on each side."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from anpx_host.config import LoggingConfig
from anpx_host.logsetup import setup_logging

from .test_cli import ports_args, running


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        handler.close()
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_log_file_rotates_by_size(tmp_path, restore_logging):
    path = tmp_path / "anpx.log"
    setup_logging(LoggingConfig(level="INFO", file=str(path), max_size=2000, backup_count=2))
    log = logging.getLogger("anpx.test")
    for i in range(200):
        log.info("line %03d %s", i, "x" * 40)
    log.debug("not at INFO")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["anpx.log", "anpx.log.1", "anpx.log.2"]  # backup_count bounds the rest
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    assert "line 199" in path.read_text()
    assert "not at INFO" not in path.read_text()


def test_access_lines_on_both_sides(tmp_path):
    ports, args = ports_args()
    config = tmp_path / "c.toml"
    log_file = tmp_path / "anpx.log"
    config.write_text(f'[logging]\nlevel = "INFO"\nfile = "{log_file}"\n')
    with running("anpx_trio", "both", "--config", str(config), *args) as proc:
        proc.wait_for("tunnel to")
        r = httpx.post(
            f"http://127.0.0.1:{ports['http']}/echo?a=1",
            content=b"12345",
            headers={"x-request-id": "req-77"},
        )
        assert r.status_code == 200
        assert proc.stop() == 0
    text = log_file.read_text()
    gateway = [line for line in text.splitlines() if "anpx.access.gateway" in line]
    receiver = [line for line in text.splitlines() if "anpx.access.receiver" in line]
    # request id, client, method, target, status, bytes, duration, route
    assert re.search(r"req-77 127\.0\.0\.1 POST /echo\?a=1 200 \d+B \d+\.\dms route=/", gateway[0])
    assert re.search(r"req-77 POST /echo\?a=1 200 \d+B \d+\.\dms", receiver[0])
