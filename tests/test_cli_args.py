"""anpx_host.cli, without processes: argv -> (mode, Config), option names, precedence, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from anpx_host.cli import OPTIONS, build_parser, parse_command_line, parse_or_exit
from anpx_host.config import ConfigError, load_config

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
PROG = "python -m anpx_test"


def stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.rstrip("\n")


# --- modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["gateway", "receiver", "both"])
def test_mode_argument(mode: str) -> None:
    got, cfg = parse_command_line([mode])
    assert got == mode == cfg.mode


def test_no_arguments_is_the_seeds_default_mode_with_defaults() -> None:
    mode, cfg = parse_command_line([])
    assert mode == "gateway"
    assert cfg == load_config(None)


def test_mode_from_file_then_option(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('mode = "receiver"\n')
    assert parse_command_line(["--config", str(path)])[0] == "receiver"
    assert parse_command_line(["-c", str(path), "--mode", "both"])[0] == "both"
    assert parse_command_line(["-c", str(path), "gateway"])[0] == "gateway"


def test_mode_argument_contradicting_mode_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_command_line(["--mode", "gateway", "both"], PROG)
    assert info.value.code == 2
    assert stderr_line(capsys) == (
        f"{PROG}: error: mode 'both' contradicts --mode gateway (see --help)"
    )


def test_both_with_nothing_else_serves_the_demo_through_its_own_gateway() -> None:
    _, cfg = parse_command_line(["both", "--wss-port", "9999"])
    assert cfg.receiver.backend == "demo"
    assert cfg.receiver.urls == ("ws://127.0.0.1:9999",)


# --- every option lands on its key ---------------------------------------------------------

CASES = [
    (["--gateway-host", "0.0.0.0"], lambda c: c.gateway.host, "0.0.0.0"),
    (["--gateway-port", "9000"], lambda c: c.gateway.port, 9000),
    (["--wss-host", "10.0.0.1"], lambda c: c.gateway.wss_host, "10.0.0.1"),
    (["--wss-port", "9001"], lambda c: c.gateway.wss_port, 9001),
    (["--admin-port", "0"], lambda c: c.gateway.admin_port, 0),
    (["--insecure"], lambda c: c.gateway.insecure, True),
    (["--workers", "4"], lambda c: c.gateway.workers, 4),
    (["--gateway-url", "wss://gw.example:443/t"], lambda c: c.receiver.urls, ("wss://gw.example:443/t",)),
    (["--gateway-url", "ws://a:1", "--gateway-url", "ws://b:2"], lambda c: c.receiver.urls, ("ws://a:1", "ws://b:2")),
    (["--local-app", "pkg.mod:app"], lambda c: c.receiver.local_app_module, "pkg.mod:app"),
    (["--factory"], lambda c: c.receiver.app_factory, True),
    (["--interface", "wsgi"], lambda c: c.receiver.interface, "wsgi"),
    (["--local-url", "http://127.0.0.1:8000"], lambda c: c.receiver.forward, ("127.0.0.1", 8000)),
    (["--client-id", "edge-7"], lambda c: c.receiver.client_id, "edge-7"),
    (["--local-addr", "10.0.0.5"], lambda c: c.receiver.tcp_local_addr, "10.0.0.5"),
    (["--local-port", "5432"], lambda c: c.receiver.tcp_local_port, 5432),
    (["--route", "api.example.com/", "--route", "/v2"], lambda c: c.receiver.routes, ("api.example.com/", "/v2")),
    (["--log-level", "warning"], lambda c: c.logging.level, "WARNING"),
    (["--debug"], lambda c: c.debug, True),
    (["--loop", "uvloop"], lambda c: c.loop, "uvloop"),
    (["--command-mode", "--command-root", "/srv/code"], lambda c: c.command.enabled, True),
    (["--command-root", "/a", "--command-root", "/b"], lambda c: c.command.roots, ("/a", "/b")),
    (["--enable-mcp"], lambda c: c.command.enable_mcp, True),
    (["--mcp-port", "9021"], lambda c: c.command.mcp_port, 9021),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "get", "value"), CASES)
def test_option_sets_its_key_before_or_after_the_mode(argv: list[str], get, value) -> None:
    assert get(parse_command_line(["receiver", *argv])[1]) == value
    assert get(parse_command_line([*argv, "receiver"])[1]) == value


def test_every_option_is_covered_by_a_case() -> None:
    used = {arg for argv, _, _ in CASES for arg in argv if arg.startswith("--")}
    declared = {o.flags[-1] for o in OPTIONS} - {"--config", "--mode"}
    assert used == declared


def test_option_after_the_mode_wins_over_one_before_it() -> None:
    _, cfg = parse_command_line(["--gateway-port", "9000", "gateway", "--gateway-port", "9100"])
    assert cfg.gateway.port == 9100


# --- precedence ----------------------------------------------------------------------------


def test_option_beats_file_beats_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[gateway]\nport = 9000\nwss_port = 9001\n[logging]\nlevel = 'ERROR'\n")
    _, cfg = parse_command_line(["gateway", "--config", str(path), "--gateway-port", "9100"])
    assert (cfg.gateway.port, cfg.gateway.wss_port, cfg.gateway.admin_port) == (9100, 9001, 8081)
    assert cfg.logging.level == "ERROR"
    _, cfg = parse_command_line(["gateway", "-c", str(path), "--log-level", "debug"])
    assert cfg.logging.level == "DEBUG"


def test_local_app_option_replaces_the_files_forward_target(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[receiver]\nlocal_url = "http://127.0.0.1:8000"\n')
    _, cfg = parse_command_line(["receiver", "-c", str(path), "--local-app", "m:app"])
    assert cfg.receiver.backend == "app" and cfg.receiver.local_url is None
    _, cfg = parse_command_line(["receiver", "-c", str(path)])
    assert cfg.receiver.forward == ("127.0.0.1", 8000)


def test_both_app_and_url_on_the_command_line_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_command_line(["receiver", "--local-app", "m:app", "--local-url", "http://h:1"])
    assert str(info.value) == (
        "config error: [receiver] local_url: conflicts with local_app_module; set only one "
        "(from --local-url)"
    )


# --- errors --------------------------------------------------------------------------------


def test_bad_value_names_the_key_and_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_or_exit(["gateway", "--gateway-port", "70000"], PROG)
    assert info.value.code == 2
    assert stderr_line(capsys) == (
        f"{PROG}: config error: [gateway] port: expected an integer from 0 to 65535, "
        "got 70000 (from --gateway-port)"
    )


def test_several_gateway_urls_name_the_option_too() -> None:
    with pytest.raises(ConfigError) as info:
        parse_command_line(["receiver", "--gateway-url", "ws://a", "--gateway-url", "http://b"])
    assert str(info.value).endswith("(from --gateway-url)")
    assert info.value.path == "receiver.gateway_urls"


def test_file_error_does_not_blame_an_option(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[gateway]\nport = 'x'\n")
    with pytest.raises(SystemExit):
        parse_or_exit(["gateway", "-c", str(path), "--wss-port", "1"], PROG)
    assert stderr_line(capsys) == (
        f'{PROG}: config error: [gateway] port: expected an integer from 0 to 65535, got "x"'
    )


def test_missing_config_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(SystemExit) as info:
        parse_or_exit(["both", "--config", str(path)], PROG)
    assert info.value.code == 2
    assert stderr_line(capsys) == (
        f"{PROG}: config error: cannot read {path}: No such file or directory"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gateway", "--gateway-port", "abc"], "argument --gateway-port: invalid int value: 'abc'"),
        (["gateway", "--bogus"], "unrecognized arguments: --bogus"),
        (["gateway", "--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
        (["proxy"], "argument {gateway,receiver,both}: invalid choice: 'proxy'"),
        (["gateway", "--gateway-url"], "argument --gateway-url: expected one argument"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_command_line(argv, PROG)
    assert info.value.code == 2
    line = stderr_line(capsys)
    assert line.startswith(f"{PROG}") and ": error: " in line
    assert message in line and line.endswith("(see --help)")


def test_help_shows_the_program_name_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_command_line(["--help"], "python -m anpx_asyncio")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m anpx_asyncio")
    for option in OPTIONS:
        assert option.flags[-1] in out
    with pytest.raises(SystemExit):
        parse_command_line(["both", "--help"], "python -m anpx_asyncio")
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m anpx_asyncio both")
    assert "--mode" not in out  # the mode is already given


def test_parser_is_fresh_each_time() -> None:
    assert build_parser("a").prog == "a" and build_parser("b").prog == "b"


def test_every_option_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    table = text.split("## Command-line options", 1)[1].split("\n## ", 1)[0]
    for option in OPTIONS:
        assert re.search(rf"^\| `{re.escape(option.flags[-1])}\b", table, re.M) or re.search(
            rf"^\| `{re.escape(option.flags[0])} \w+`, `{re.escape(option.flags[-1])}\b",
            table,
            re.M,
        ), f"{option.flags[-1]} is not in the options table"
        if option.key and option.key != "mode":
            # ... and named beside its key in the key tables.
            name = option.key.rpartition(".")[2]
            assert re.search(rf"^\| `{name}` \|.*`{re.escape(option.flags[-1])}`", text, re.M), (
                f"{option.key} row does not name {option.flags[-1]}"
            )
