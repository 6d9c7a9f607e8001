"""Command mode's parts without processes: the output log, strict numbers, UTF-8 cuts, the
guard's throttling at its edge (fake clock), [command] config checks, token resolution."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_command.app import _whole_characters
from anpx_command.guard import Guard, Refusal
from anpx_command.outputlog import OutputLog
from anpx_command.web import BadRequest, parse_int
from anpx_host.config import ConfigError, parse_config
from anpx_host.launch import make_plan

from .hypothesis_profiles import examples

TOKEN = b"unit-token-0123456789"


@settings(max_examples=examples(200), deadline=None)
@given(
    st.lists(st.binary(max_size=50), max_size=20),
    st.integers(1, 400),
    st.integers(0, 500),
    st.integers(1, 100),
)
def test_output_log_keeps_a_prefix_up_to_the_cap_and_replays_any_offset(chunks, cap, offset, limit):
    log = OutputLog(cap)
    everything = b""
    for chunk in chunks:
        room = cap - min(len(everything), cap)
        assert log.append(chunk) is (len(chunk) <= room)  # False: some of it was dropped
        everything += chunk
    kept = everything[:cap]
    assert len(log) == len(kept) and log.truncated == (len(everything) > cap)
    assert log.read(offset, limit) == kept[offset : offset + limit]


def test_waiting_readers_wake_on_append_and_close():
    async def main() -> None:
        log = OutputLog(100)
        woken = []

        async def reader() -> None:
            await log.wait_beyond(0)
            woken.append(len(log))
            await log.wait_beyond(len(log))
            woken.append(log.closed)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            log.append(b"abc")
            await anyio.wait_all_tasks_blocked()
            log.close()
        assert woken == [3, True]

    for backend in ("asyncio", "trio"):
        anyio.run(main, backend=backend)


@given(st.text(max_size=25))
def test_parse_int_accepts_only_ascii_digits_within_bounds(text):
    try:
        value = parse_int(text, "offset", 0, 10**6)
    except BadRequest:
        ok = text.isascii() and text.isdigit() and 0 < len(text) <= 19 and int(text) <= 10**6
        assert not ok
    else:
        assert text.isascii() and text.isdigit() and value == int(text) <= 10**6


@given(st.text(max_size=40), st.integers(0, 200))
def test_events_cut_on_whole_characters(text, cut):
    data = text.encode()
    head = _whole_characters(data[:cut])
    assert data.startswith(head)
    assert head.decode() + data[len(head) :].decode() == text  # both halves decode cleanly
    assert len(data[:cut]) - len(head) <= 3


def scope(auth: str | None = None, client: str = "192.0.2.1", **headers: str) -> dict:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if auth is not None:
        raw.append((b"authorization", auth.encode()))
    return {"type": "http", "path": "/api/sessions", "headers": raw, "client": (client, 1234)}


def test_guard_throttles_failures_at_the_burst_edge_then_refills():
    now = [0.0]
    guard = Guard(TOKEN, failure_rate=0.5, failure_burst=3, clock=lambda: now[0])
    good = "Bearer " + TOKEN.decode()
    for _ in range(3):
        with pytest.raises(Refusal) as info:
            guard.check(scope("Bearer nope"))
        assert info.value.status == 401
    guard.check(scope(good))  # the right token still works within the burst
    with pytest.raises(Refusal) as info:
        guard.check(scope("Bearer nope"))  # the 4th failure
    assert info.value.status == 429 and dict(info.value.headers)[b"retry-after"] == b"2"
    with pytest.raises(Refusal):
        guard.check(scope(good))  # throttled: even the right token waits
    guard.check(scope(good, client="192.0.2.2"))  # other addresses are not affected
    now[0] = 1.99
    with pytest.raises(Refusal):
        guard.check(scope(good))
    now[0] = 2.0
    guard.check(scope(good))  # one token refilled: allowed again


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "bearer x",
        "Basic " + TOKEN.decode(),
        TOKEN.decode(),
        "Bearer " + TOKEN.decode() + "x",
        "Bearer " + TOKEN.decode()[:-1],
    ],
)
def test_guard_refuses_anything_but_the_token(auth):
    with pytest.raises(Refusal) as info:
        Guard(TOKEN).check(scope(auth))
    assert info.value.status == 401


def test_guard_accepts_the_scheme_in_any_case():
    Guard(TOKEN).check(scope("bEaReR " + TOKEN.decode()))


ROOT = os.path.abspath(os.sep + "srv")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ({"enabled": True}, "[command] roots: required when enabled = true"),
        ({"roots": ["relative/dir"]}, "[command] roots: expected absolute paths"),
        ({"roots": [ROOT], "token": "a" * 20, "token_file": "/t"}, "[command] token_file: conflicts with token"),
        ({"executors": {"claude": ["x"]}}, "[command] executors: claude is a built-in executor"),
        ({"executors": {"Bad Name": ["x"]}}, "[command] executors: expected a table of name = argv array"),
        ({"executors": {"ok": []}}, "[command] executors: expected a table"),
        ({"executors": {"ok": "aider {prompt}"}}, "[command] executors: expected a table"),
        ({"max_sessions": 5, "max_retained": 4}, "[command] max_sessions: must not exceed max_retained (4)"),
        ({"max_output_bytes": 1023}, "[command] max_output_bytes: expected at least 1024 bytes"),
        ({"max_sessions": 0}, "[command] max_sessions: expected an integer from 1 to 1000"),
        ({"mcp_path": "mcp"}, "[command] mcp_path: expected"),
        ({"mcp_port": 70000}, "[command] mcp_port: expected an integer from 0 to 65535"),
        ({"env_allow": ["PATH", ""]}, "[command] env_allow: expected an array of non-empty strings"),
        ({"secret": 1}, "[command] secret: unknown key"),
    ],
)  # fmt: skip
def test_command_config_errors(command, message):
    with pytest.raises(ConfigError) as info:
        parse_config({"command": command})
    assert str(info.value).startswith("config error: " + message), str(info.value)


def test_edges_are_accepted():
    c = parse_config(
        {"command": {"max_output_bytes": 1024, "max_sessions": 4, "max_retained": 4}}
    ).command
    assert (c.max_output_bytes, c.max_sessions, c.max_retained) == (1024, 4, 4)
    assert (
        parse_config({"command": {"max_output_bytes": "8MB"}}).command.max_output_bytes == 8 << 20
    )


def plan_for(tmp_path: Path, **command):
    cfg = parse_config({"command": {"enabled": True, "roots": [str(tmp_path)], **command}})
    return make_plan("receiver", cfg)


def test_token_from_file_env_or_key_and_refusals(tmp_path, monkeypatch):
    monkeypatch.delenv("ANPX_COMMAND_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="will not start without an API token"):
        plan_for(tmp_path)
    monkeypatch.setenv("ANPX_COMMAND_TOKEN", "e" * 16)
    assert plan_for(tmp_path).receiver.command_token == b"e" * 16  # 16: the edge
    monkeypatch.setenv("ANPX_COMMAND_TOKEN", "e" * 15)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        plan_for(tmp_path)
    path = tmp_path / "token"
    path.write_text("f" * 32 + "\n")
    path.chmod(0o644)
    plan = plan_for(tmp_path, token_file=str(path))
    assert plan.receiver.command_token == b"f" * 32
    assert any("can be read by other users" in w for w in plan.warnings)
    path.chmod(0o600)
    assert not plan_for(tmp_path, token_file=str(path)).warnings
    with pytest.raises(ConfigError, match="cannot read"):
        plan_for(tmp_path, token_file=str(tmp_path / "missing"))
    assert plan_for(tmp_path, token="g" * 20).receiver.command_token == b"g" * 20


def test_command_mode_replaces_the_app_and_is_off_by_default(tmp_path):
    forward = {"local_url": "http://127.0.0.1:3000"}  # a receiver alone must serve something
    assert make_plan("receiver", parse_config({"receiver": forward})).receiver.command is None
    cfg = parse_config(
        {"receiver": {"local_app_module": "m:app"}, "command": {"enabled": True, "roots": [str(tmp_path)], "token": "h" * 20}}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="command mode is the app this receiver serves"):
        make_plan("receiver", cfg)
    plan = make_plan(
        "both",
        parse_config({"command": {"enabled": True, "roots": [str(tmp_path)], "token": "h" * 20}}),
    )
    assert plan.receiver.command is not None and not plan.receiver.demo
    plan = make_plan(
        "receiver", parse_config({"receiver": forward, "command": {"enable_mcp": True}})
    )
    assert any("MCP is part of command mode" in w for w in plan.warnings)
