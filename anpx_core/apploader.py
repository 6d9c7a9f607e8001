"""Import the ASGI app named by ``local_app_module`` ("pkg.module:attr").

Like uvicorn: the current directory goes on ``sys.path`` first, ``attr`` may
be dotted (``"pkg.main:api.app"``), and with ``factory=True`` the attribute is
called without arguments to make the app. Every failure is an
:class:`AppLoadError` whose ``str`` is one line saying what to fix; the
original exception stays chained for a traceback in debug mode.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from .config import ConfigError

__all__ = ["AppLoadError", "load_app"]


class AppLoadError(ConfigError):
    """The app could not be loaded; ``str()`` is one line for the user."""

    prefix = "app error"


def load_app(spec: str, factory: bool = False, *, app_dir: str | None = None) -> Callable[..., Any]:
    """The ASGI app ``spec`` names; ``app_dir`` (default: the current directory) goes on sys.path."""
    module_name, sep, attr_path = spec.partition(":")
    attrs = attr_path.split(".")
    if not sep or not module_name or not all(attrs) or ":" in attr_path:
        raise AppLoadError(f'"{spec}" must be "module:attribute", e.g. "myapp.main:app"')
    directory = os.getcwd() if app_dir is None else app_dir
    if directory not in sys.path:
        sys.path.insert(0, directory)

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise AppLoadError(
                f'cannot import module "{module_name}": {exc} (searched {directory} and sys.path)'
            ) from exc
        raise AppLoadError(f'error while importing "{module_name}": {_describe(exc)}') from exc
    except Exception as exc:
        raise AppLoadError(f'error while importing "{module_name}": {_describe(exc)}') from exc

    obj: Any = module
    for i, name in enumerate(attrs):
        owner = f'module "{module_name}"' if i == 0 else f'"{module_name}:{".".join(attrs[:i])}"'
        try:
            obj = getattr(obj, name)
        except AttributeError as exc:
            close = difflib.get_close_matches(
                name, [n for n in dir(obj) if not n.startswith("_")], 1
            )
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise AppLoadError(f'{owner} has no attribute "{name}"{hint}') from exc
        except Exception as exc:
            raise AppLoadError(f'reading "{spec}" failed: {_describe(exc)}') from exc

    if factory:
        if not callable(obj):
            raise AppLoadError(f'app factory "{spec}" is not callable (it is {_kind(obj)})')
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(f'app factory "{spec}" failed: {_describe(exc)}') from exc
        what = f'the app made by factory "{spec}"'
    else:
        what = f'"{spec}"'
    if not callable(obj):
        raise AppLoadError(f"{what} is not callable (it is {_kind(obj)}); expected an ASGI app")
    if not _takes_three_args(obj):
        hint = "" if factory else "; if it makes the app, use --factory (app_factory = true)"
        raise AppLoadError(
            f"{what} is not an ASGI app: it cannot be called as app(scope, receive, send){hint}"
        )
    return obj


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _kind(obj: Any) -> str:
    return "None" if obj is None else f"a {type(obj).__name__}"


def _takes_three_args(obj: Any) -> bool:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # builtins and C callables: give them the benefit of doubt
        return True
    try:
        signature.bind(None, None, None)
    except TypeError:
        return False
    return True
