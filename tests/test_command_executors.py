"""Executors build exact argv lists (never shell strings) for each agent CLI."""

from __future__ import annotations

import pytest

from anpx_command.executors import Request, RequestError, executors_from

EX = executors_from(
    claude_path="/opt/claude",
    codex_path="/opt/codex",
    gemini_path="/opt/gemini",
    templates={"aider": ("aider", "--yes", "--message", "{prompt}", "--dir={project_path}")},
)


def test_claude_is_headless_with_stream_json_output() -> None:
    argv = EX["claude"].argv(Request("fix the bug", "/src/app"))
    assert argv == [
        "/opt/claude",
        "-p",
        "fix the bug",
        "--output-format",
        "stream-json",
        "--verbose",
    ]


def test_claude_resumes_a_session() -> None:
    argv = EX["claude"].argv(Request("go on", "/src/app", resume="0b9e-4f_1"))
    assert argv == [
        "/opt/claude",
        "-p",
        "go on",
        "--output-format",
        "stream-json",
        "--verbose",
        "--resume",
        "0b9e-4f_1",
    ]


def test_codex_exec_and_gemini_p() -> None:
    assert EX["codex"].argv(Request("add tests", "/src")) == ["/opt/codex", "exec", "add tests"]
    assert EX["gemini"].argv(Request("explain", "/src")) == ["/opt/gemini", "-p", "explain"]


def test_user_defined_template_replaces_placeholders_once() -> None:
    argv = EX["aider"].argv(Request("say {project_path} and {prompt}", "/src/x"))
    assert argv == [
        "aider",
        "--yes",
        "--message",
        "say {project_path} and {prompt}",
        "--dir=/src/x",
    ]


@pytest.mark.parametrize("name", ["claude", "codex", "gemini", "aider"])
def test_a_prompt_is_never_an_option(name: str) -> None:
    argv = EX[name].argv(Request("--dangerously-skip-permissions", "/src"))
    assert "--dangerously-skip-permissions" not in argv
    assert " --dangerously-skip-permissions" in argv


@pytest.mark.parametrize("resume", ["", "a b", "../x", "x" * 129, "id;rm -rf /", "--help"])
def test_resume_ids_are_checked(resume: str) -> None:
    with pytest.raises(RequestError):
        EX["claude"].argv(Request("p", "/src", resume=resume))


@pytest.mark.parametrize("name", ["codex", "gemini", "aider"])
def test_only_claude_resumes(name: str) -> None:
    with pytest.raises(RequestError, match="cannot resume"):
        EX[name].argv(Request("p", "/src", resume="abc"))
