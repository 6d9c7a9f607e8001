"""Executors: how a session's argv is built. An argv is a list, never a shell string.

Built-ins follow each CLI's headless mode: ``claude -p`` with stream-json output (and
``--resume``), ``codex exec``, ``gemini -p``. User-defined executors are argv templates
from ``[command.executors]`` whose elements may contain ``{prompt}`` and ``{project_path}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["BUILTIN", "Executor", "Request", "RequestError", "executors_from"]

_RESUME_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_PLACEHOLDER = re.compile(r"\{prompt\}|\{project_path\}")


class RequestError(ValueError):
    """A session request that cannot be run; ``str`` is the short reason for the client."""


@dataclass(frozen=True, slots=True)
class Request:
    prompt: str
    project_path: str
    resume: str | None = None


def guard(prompt: str) -> str:
    # A prompt beginning with "-" would be parsed as an option by the CLI; a leading space
    # keeps it an argument without changing what the model reads.
    return " " + prompt if prompt.startswith("-") else prompt


@dataclass(frozen=True, slots=True)
class Executor:
    name: str
    build: Callable[[Request], list[str]]
    resumable: bool = False

    def argv(self, request: Request) -> list[str]:
        if request.resume is not None:
            if not self.resumable:
                raise RequestError(f"executor {self.name} cannot resume a session")
            if not _RESUME_ID.fullmatch(request.resume):
                raise RequestError(
                    "resume: expected a session id of letters, digits, - and _ (not starting with -)"
                )
        return self.build(request)


def claude(path: str) -> Executor:
    def build(r: Request) -> list[str]:
        argv = [path, "-p", guard(r.prompt), "--output-format", "stream-json", "--verbose"]
        if r.resume is not None:
            argv += ["--resume", r.resume]
        return argv

    return Executor("claude", build, resumable=True)


def codex(path: str) -> Executor:
    return Executor("codex", lambda r: [path, "exec", guard(r.prompt)])


def gemini(path: str) -> Executor:
    return Executor("gemini", lambda r: [path, "-p", guard(r.prompt)])


def template(name: str, argv: tuple[str, ...]) -> Executor:
    def build(r: Request) -> list[str]:
        values = {"{prompt}": r.prompt, "{project_path}": r.project_path}
        # One pass over the template: a prompt containing "{project_path}" stays as written.
        return [
            guard(r.prompt)
            if part == "{prompt}"
            else _PLACEHOLDER.sub(lambda m: values[m[0]], part)
            for part in argv
        ]

    return Executor(name, build)


BUILTIN = ("claude", "codex", "gemini")


def executors_from(
    *,
    claude_path: str = "claude",
    codex_path: str = "codex",
    gemini_path: str = "gemini",
    templates: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Executor]:
    found = {
        "claude": claude(claude_path),
        "codex": codex(codex_path),
        "gemini": gemini(gemini_path),
    }
    for name, argv in (templates or {}).items():
        found[name] = template(name, tuple(argv))
    return found
