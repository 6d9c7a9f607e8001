"""The crash barrier: an unexpected exception resets one connection, never the process.

Every per-connection entry point of a core (``receive``, ``take_output``, ``written``,
``can_read``, ...) is wrapped by :func:`guarded`. An exception that escapes the core's
own handling (a bug, or an input nobody thought of) is logged once, with its traceback,
and the connection is *doomed*: it is aborted (the driver closes its socket without
flushing: "close" from ``take_output`` alone would only shut a TCP stream's write side and
leave its reader waiting), from then on ``take_output`` says "close" and nothing else is
done for it, and the driver's ``closed(cid)`` runs the normal clean-up (the stream
cancelled, the tunnel's streams failed, a reconnect).
Finer barriers inside the cores reset one stream instead of its whole tunnel.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class CrashBarrier:
    """Mixin for the cores: they set ``_doomed``, ``_wakeups``, ``_conns`` and ``_barrier_log``."""

    _doomed: set[int]
    _wakeups: set[Any]  # connection ids, and contract.Signal keys
    _conns: dict[int, Any]
    _barrier_log: logging.Logger

    def _contain(self, cid: int, exc: BaseException, where: str) -> None:
        """Log ``exc`` once and reset connection ``cid``."""
        self._barrier_log.error(
            "internal error in %s on connection %d; resetting the connection",
            where,
            cid,
            exc_info=exc,
        )
        self._doomed.add(cid)
        self._wakeups.add(cid)
        self.abort(cid)

    def abort(self, cid: int) -> None:
        """Have the driver close connection ``cid`` at once (each core defines it)."""
        raise NotImplementedError

    @property
    def doomed(self) -> int:
        """Connections reset by the barrier whose sockets the driver has not closed yet."""
        return len(self._doomed)


def guarded(fallback: Any = None) -> Callable[[F], F]:
    """Wrap an entry point ``method(self, cid, ...)``: on a doomed connection return
    ``fallback`` at once; on an unexpected exception contain it and return ``fallback``."""

    def wrap(method: F) -> F:
        name = method.__name__

        @functools.wraps(method)
        def entry(self: Any, cid: int, *args: Any, **kwargs: Any) -> Any:
            if cid in self._doomed:
                return fallback
            try:
                return method(self, cid, *args, **kwargs)
            except Exception as exc:
                self._contain(cid, exc, name)
                return fallback

        return entry  # type: ignore[return-value]

    return wrap


def guarded_close(method: F) -> F:
    """Wrap ``closed(self, cid, now)``: the clean-up always runs, and if it fails the
    connection is forgotten anyway (one traceback), so nothing refers to a dead socket."""

    @functools.wraps(method)
    def entry(self: Any, cid: int, *args: Any, **kwargs: Any) -> Any:
        self._doomed.discard(cid)
        try:
            return method(self, cid, *args, **kwargs)
        except Exception as exc:
            self._barrier_log.error(
                "internal error closing connection %d; forgetting it", cid, exc_info=exc
            )
            self._conns.pop(cid, None)
            return None

    return entry  # type: ignore[return-value]
