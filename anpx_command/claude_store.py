"""Claude Code's own store, read-only but for deletion: ``~/.claude/projects``.

Claude Code keeps one directory per working directory (its path with ``/`` and ``.``
turned into ``-``) holding one ``<session id>.jsonl`` transcript per session, one JSON
object per line (``type``, ``sessionId``, ``cwd``, ``timestamp``, ``message``, ...).
Names from clients are checked against strict patterns and never joined as paths
otherwise; files are read up to a size cap; lines that are not JSON objects are skipped.
Blocking file I/O runs in a worker thread.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

__all__ = ["ClaudeStore", "StoreNotFound"]

_PROJECT_ID = re.compile(r"-?[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
SUMMARY_CHARS = 200


class StoreNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class ClaudeStore:
    home: Path  # ~/.claude
    max_bytes: int = 16 * 1024 * 1024  # per transcript read

    @property
    def projects_dir(self) -> Path:
        return self.home / "projects"

    async def projects(self) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self._projects)

    async def working_directories(self) -> list[str]:
        projects = await self.projects()
        return sorted({p["path"] for p in projects if p["path"]})

    async def project_sessions(self, project_id: str) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self._project_sessions, project_id)

    async def all_sessions(self) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self._all_sessions)

    async def session(self, session_id: str) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self._session, session_id)

    async def delete_session(self, session_id: str) -> None:
        await anyio.to_thread.run_sync(lambda: self._find(session_id).unlink())

    # --- blocking helpers, in a thread ----------------------------------------------------

    def _project_dirs(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.projects_dir))
        except OSError:
            return []
        return sorted(
            Path(e.path)
            for e in entries
            if e.is_dir(follow_symlinks=False) and _PROJECT_ID.fullmatch(e.name)
        )

    def _transcripts(self, project: Path) -> list[Path]:
        try:
            entries = list(os.scandir(project))
        except OSError:
            return []
        return sorted(
            Path(e.path)
            for e in entries
            if e.name.endswith(".jsonl")
            and _SESSION_ID.fullmatch(e.name[:-6])
            and e.is_file(follow_symlinks=False)
        )

    def _projects(self) -> list[dict[str, Any]]:
        found = []
        for project in self._project_dirs():
            sessions = [self._summary(t, project.name) for t in self._transcripts(project)]
            cwd = next((s["cwd"] for s in sessions if s["cwd"]), None)
            found.append(
                {
                    "id": project.name,
                    "path": cwd or _guess_path(project.name),
                    "session_count": len(sessions),
                    "updated": max((s["updated"] for s in sessions), default=None),
                }
            )
        return found

    def _project_sessions(self, project_id: str) -> list[dict[str, Any]]:
        if not _PROJECT_ID.fullmatch(project_id) or project_id in (".", ".."):
            raise StoreNotFound(project_id)
        project = self.projects_dir / project_id
        if not project.is_dir() or project.is_symlink():
            raise StoreNotFound(project_id)
        return [self._summary(t, project_id) for t in self._transcripts(project)]

    def _all_sessions(self) -> list[dict[str, Any]]:
        return [
            self._summary(t, project.name)
            for project in self._project_dirs()
            for t in self._transcripts(project)
        ]

    def _find(self, session_id: str) -> Path:
        if not _SESSION_ID.fullmatch(session_id):
            raise StoreNotFound(session_id)
        for project in self._project_dirs():
            path = project / f"{session_id}.jsonl"
            if path.is_file() and not path.is_symlink():
                return path
        raise StoreNotFound(session_id)

    def _session(self, session_id: str) -> dict[str, Any]:
        path = self._find(session_id)
        messages, truncated = self._read(path)
        return {
            **self._describe(path, path.parent.name, messages),
            "messages": messages,
            "truncated": truncated,
        }

    def _summary(self, path: Path, project_id: str) -> dict[str, Any]:
        messages, _ = self._read(path)
        return self._describe(path, project_id, messages)

    def _describe(
        self, path: Path, project_id: str, messages: list[dict[str, Any]]
    ) -> dict[str, Any]:
        stamps = [m["timestamp"] for m in messages if isinstance(m.get("timestamp"), str)]
        first_user = next((m for m in messages if m.get("type") == "user"), None)
        cwd = next((m["cwd"] for m in messages if isinstance(m.get("cwd"), str)), None)
        summary = next(
            (
                m["summary"]
                for m in messages
                if m.get("type") == "summary" and isinstance(m.get("summary"), str)
            ),
            None,
        )
        return {
            "id": path.name[:-6],
            "project_id": project_id,
            "cwd": cwd,
            "summary": summary or _text_of(first_user)[:SUMMARY_CHARS],
            "message_count": sum(m.get("type") in ("user", "assistant") for m in messages),
            "created": min(stamps, default=None),
            "updated": max(stamps, default=None),
        }

    def _read(self, path: Path) -> tuple[list[dict[str, Any]], bool]:
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError:
            return [], False
        truncated = len(data) > self.max_bytes
        if truncated:  # keep whole lines only
            data = data[: self.max_bytes]
            data = data[: data.rfind(b"\n") + 1]
        messages = []
        for line in data.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                messages.append(item)
        return messages, truncated


def _text_of(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    content = (
        entry.get("message", {}).get("content") if isinstance(entry.get("message"), dict) else None
    )
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _guess_path(project_id: str) -> str:
    # Lossy ("-" stood for "/", "." and "-"): used only when no transcript names its cwd.
    return project_id.replace("-", "/")
