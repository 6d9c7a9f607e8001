"""Import the app named by ``local_app_module`` ("pkg.module:attr") and make it ASGI.

Like uvicorn: the current directory goes on ``sys.path`` first, ``attr`` may
be dotted (``"pkg.main:api.app"``), and with ``factory=True`` the attribute is
called without arguments to make the app. A WSGI app (Flask, Django's
``get_wsgi_application()``, ...), detected or named with ``interface="wsgi"``,
is served through :class:`~anpx_host.wsgi.WsgiApp` on the driver's threads.
Every failure is an :class:`AppLoadError` whose ``str`` is one line saying
what to fix; the original exception stays chained for a traceback in debug mode.
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
from .wsgi import WsgiApp

__all__ = ["AppLoadError", "NeedsAsyncio", "load_app"]


class AppLoadError(ConfigError):
    """The app could not be loaded; ``str()`` is one line for the user."""

    prefix = "app error"


def load_app(
    spec: str, factory: bool = False, interface: str = "auto", *, app_dir: str | None = None
) -> Callable[..., Any]:
    """The ASGI app to serve for ``spec``; ``app_dir`` (default: the current directory) goes on
    sys.path. ``interface``: "asgi", "wsgi" (served by WsgiApp) or "auto" (tell by signature).
    """
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
    kind = _check_interface(obj, what, interface, factory)
    if kind == "wsgi":
        return WsgiApp(obj, what)
    if _is_django(obj):
        return NeedsAsyncio(obj, f"{what} is a Django app, which {_ASYNCIO_HINT}")
    return obj  # type: ignore[no-any-return]  # the user's object, checked to be callable


#: Why an app refuses to start under another event loop, and what to do instead.
_ASYNCIO_HINT = "needs asyncio: run the receiver with python -m anpx_asyncio"
_EXPECTED = {
    "asgi": ("an ASGI app", "app(scope, receive, send)"),
    "wsgi": ("a WSGI app", "app(environ, start_response)"),
    "auto": ("an ASGI or WSGI app", "app(scope, receive, send) or app(environ, start_response)"),
}


def _check_interface(obj: Any, what: str, interface: str, factory: bool) -> str:
    """ "asgi" or "wsgi": how ``obj`` is to be called, checked against ``interface``."""
    if interface not in _EXPECTED:
        raise AppLoadError(f'interface must be "auto", "asgi" or "wsgi", got "{interface}"')
    expected, call = _EXPECTED[interface]
    if not callable(obj):
        raise AppLoadError(f"{what} is not callable (it is {_kind(obj)}); expected {expected}")
    is_async = _is_async(obj)
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # C callables: no signature to go by; take the user's word
        return "asgi" if interface == "auto" else interface
    asgi = _binds(signature, 3)
    wsgi = _binds(signature, 2) and not is_async
    if interface == "auto":
        # An async callable, or one taking three arguments, is ASGI; (environ, start_response)
        # alone is WSGI. uvicorn has no WSGI detection; this is the unambiguous part of it.
        if asgi or (is_async and not wsgi):
            return "asgi"
        if wsgi:
            return "wsgi"
    elif (interface == "asgi" and asgi) or (interface == "wsgi" and wsgi):
        return interface
    if interface == "asgi" and wsgi:
        hint = "; it looks like a WSGI app: use --interface wsgi or auto"
    elif interface == "wsgi" and asgi:
        hint = "; it looks like an ASGI app: use --interface asgi or auto"
    elif not factory:
        hint = "; if it makes the app, use --factory (app_factory = true)"
    else:
        hint = ""
    raise AppLoadError(f"{what} is not {expected}: it cannot be called as {call}{hint}")


def _is_async(obj: Any) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(obj):
        return True
    if inspect.isroutine(obj) or inspect.isclass(obj):
        return False
    return inspect.iscoroutinefunction(type(obj).__call__)


def _binds(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*([None] * count))
    except TypeError:
        return False
    return True


def _is_django(obj: Any) -> bool:
    # asgiref (Django's sync_to_async) runs only on asyncio; detected by class, not imported.
    return any(
        c.__module__ == "django.core.handlers.asgi" and c.__name__ == "ASGIHandler"
        for c in type(obj).__mro__
    )


class NeedsAsyncio:
    """An app that can only run on an asyncio event loop (Django's ASGI handler: asgiref).

    Under another loop (the trio driver) it fails the lifespan startup with :attr:`reason`, so
    the receiver refuses to start with one clear line instead of failing every request.
    """

    def __init__(self, app: Callable[..., Any], reason: str) -> None:
        self.app = app
        self.reason = reason

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if _running_library() == "asyncio":
            await self.app(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            await send({"type": "lifespan.startup.failed", "message": self.reason})
            return
        raise RuntimeError(self.reason)  # embedded without lifespan: fail each request


def _running_library() -> str:
    import sniffio  # a dependency of trio; it names the running event loop's library

    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return "unknown"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _kind(obj: Any) -> str:
    return "None" if obj is None else f"a {type(obj).__name__}"
