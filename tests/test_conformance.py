"""The conformance suite: vectors pass in-process and through the adapter command,
the runner reports failures loudly, and the vectors are the generator's output."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anpx_core.errors import ERROR_CODES
from conformance.runner import InProcessAdapter, load_vectors, run

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO / "conformance"
VECTORS = CONFORMANCE / "vectors"
ADAPTER_CMD = shlex.join([sys.executable, "-m", "anpx_host.adapter"])
OPS = {"encode_frame", "decode_frames", "encode_message", "decode_message"}
OPS |= {"ws_encode_records", "ws_decode_records", "ws_extensions"}  # section 20
OPS |= {"parse_tunnel_ports"}  # section 15.1
OPS |= {"tcp_handshake", "tcp_service"}  # section 21

# Quoted from issue 2: the reference encoder's bytes for the spec's worked example.
WORKED_EXAMPLE_HEX = (
    "414e505801010000000000cb42d87a2d5faf0dcd00000000010000002435353065383430302d653239622d343164342d"
    "613731362d34343636353534343030303002000000727b226d6574686f64223a2022504f5354222c202270617468223a"
    "20222f6170692f76312f72756e222c202268656164657273223a207b22636f6e74656e742d74797065223a2022617070"
    "6c69636174696f6e2f6a736f6e227d2c20227175657279223a207b2271223a202274657374227d7d030000000e7b2266"
    "6f6f223a2022626172227d"
)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def closing_counts(stdout: str) -> tuple[int, int]:
    last = stdout.strip().splitlines()[-1]
    passed, _, failed, _ = last.replace(",", "").split()
    assert last == f"{passed} passed, {failed} failed"
    return int(passed), int(failed)


@pytest.fixture(scope="module")
def vectors():
    return load_vectors(VECTORS)


def test_enough_well_formed_vectors(vectors) -> None:
    assert len(vectors) >= 60
    for v in vectors:
        assert v.description.strip(), v.name
        assert v.request.get("op") in OPS, v.name
        success = {"wire", "frames", "message", "body", "records", "ws", "ports"}
        success |= {"services", "service"}
        assert ("error" in v.expect) != bool(success & v.expect.keys())


def test_vectors_pass_in_process(vectors) -> None:
    failures = [(v.name, why) for v, why in run(vectors, InProcessAdapter()) if why]
    assert failures == []


def test_cli_in_process(vectors) -> None:
    result = cli()
    assert result.returncode == 0, result.stdout + result.stderr
    assert closing_counts(result.stdout) == (len(vectors), 0)
    assert result.stdout.count("\n") == 1  # nothing but the closing line


def test_cli_through_adapter_command(vectors) -> None:
    result = cli("--impl", ADAPTER_CMD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert closing_counts(result.stdout) == (len(vectors), 0)


def test_every_error_code_has_an_invalid_vector(vectors) -> None:
    codes = {v.expect["error"] for v in vectors if "error" in v.expect}
    # every code covered, and no typo'd code expected (plus the handshake values' own codes)
    assert codes == {*ERROR_CODES, "bad_tunnel_ports", "bad_services"}


def test_worked_example_in_every_direction(vectors) -> None:
    by_name = {v.name: v for v in vectors}
    assert by_name["request_worked_example_encode"].expect == {"wire": [WORKED_EXAMPLE_HEX]}
    assert by_name["request_worked_example_decode"].request["wire"] == [WORKED_EXAMPLE_HEX]
    assert by_name["frame_decode_worked_example"].request["wire"] == WORKED_EXAMPLE_HEX
    assert by_name["frame_encode_worked_example"].expect == {"wire": WORKED_EXAMPLE_HEX}
    assert len(bytes.fromhex(WORKED_EXAMPLE_HEX)) == 203


def write_vectors(directory: Path, vectors: list[dict]) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "set.json").write_text(json.dumps({"vectors": vectors}))


def raw(name: str) -> dict:
    for path in VECTORS.glob("*.json"):
        for v in json.loads(path.read_text())["vectors"]:
            if v["name"] == name:
                return v
    raise KeyError(name)


@pytest.mark.parametrize("impl", [None, ADAPTER_CMD])
def test_runner_reports_wrong_vectors(tmp_path: Path, impl: str | None) -> None:
    good = raw("request_worked_example_decode")
    wrong_bytes = raw("request_worked_example_encode")
    wire = wrong_bytes["expect"]["wire"][0]
    wrong_bytes["expect"]["wire"][0] = wire[:100] + ("0" if wire[100] != "0" else "1") + wire[101:]
    wrong_code = raw("bad_magic_anpy")
    wrong_code["expect"] = {"error": "bad_version"}
    write_vectors(tmp_path, [good, wrong_bytes, wrong_code])
    result = cli("--vectors", str(tmp_path), *(["--impl", impl] if impl else []))
    assert result.returncode != 0
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "1 passed, 2 failed"
    assert len(lines) == 3
    assert lines[0].startswith("FAIL request_worked_example_encode: ")
    assert "byte 50" in lines[0]
    assert lines[1].startswith("FAIL bad_magic_anpy: ")
    assert "bad_version" in lines[1] and "bad_magic" in lines[1]


@pytest.mark.parametrize(
    ("adapter", "why"),
    [
        ("import time; time.sleep(30)", "no answer within 0.5 s"),
        ("pass", "adapter exited"),
        ("import sys\nfor _ in sys.stdin: print('nope', flush=True)", "answer is not JSON"),
        ("import sys\nfor _ in sys.stdin: print('[1]', flush=True)", "not a JSON object"),
    ],
)
def test_runner_survives_broken_adapters(tmp_path: Path, adapter: str, why: str) -> None:
    write_vectors(tmp_path, [raw("frame_decode_empty_stream"), raw("bad_magic_zeros")])
    impl = shlex.join([sys.executable, "-c", adapter])
    start = time.monotonic()
    result = cli("--vectors", str(tmp_path), "--impl", impl, "--timeout", "0.5", timeout=30)
    assert time.monotonic() - start < 15
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "0 passed, 2 failed"
    assert lines[0].startswith("FAIL frame_decode_empty_stream: ") and why in lines[0]
    assert lines[1].startswith("FAIL bad_magic_zeros: ") and why in lines[1]


def test_runner_setup_errors(tmp_path: Path) -> None:
    assert cli("--vectors", str(tmp_path)).returncode == 2  # no vector files
    write_vectors(tmp_path, [raw("frame_decode_empty_stream")])
    missing = cli("--vectors", str(tmp_path), "--impl", "/nonexistent/adapter")
    assert missing.returncode == 2 and "cannot start" in missing.stderr


def test_committed_vectors_are_the_generators_output(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(CONFORMANCE / "make_vectors.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    generated = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text() for p in VECTORS.glob("*.json")}
    assert generated == committed, "run: python conformance/make_vectors.py"


def test_tooling_imports_only_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in CONFORMANCE.glob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                root = module.split(".")[0]
                # Only the runner's in-process mode may load anpx (its adapter), and only lazily.
                lazy_core = path.name == "runner.py" and id(node) not in top_level
                assert root in stdlib or (root in ("anpx_core", "anpx_host") and lazy_core), (
                    path.name,
                    module,
                )
