"""Start the reference anp-proxy with its per-address rate limit lifted, in memory.

    <reference venv>/bin/python bench/reference_unlimited.py --config FILE

Run with the reference's source tree as the working directory (``compare.py`` does this).
Its gateway adds ``RateLimitMiddleware(max_requests=100, window_seconds=60)`` with the limit
hard-coded (anp_proxy/gateway/server.py), so a benchmark would get 429 after 100 requests.
Its files are left untouched: this wrapper imports the middleware class, wraps ``__init__``
so that each instance's limiter always allows, and then runs ``anp_proxy.py`` as
``__main__`` exactly as ``python anp_proxy.py --config FILE`` would.

The middleware itself still runs on every request (it is part of the reference's cost).
Only the check is replaced: raising ``max_requests`` instead would keep every request's
timestamp for 60 s in a list that is filtered on every request, a cost that grows with
the request rate and that no real deployment under the limit pays.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from anp_proxy.gateway import middleware


class _AlwaysAllowed:
    def is_allowed(self, key: str) -> bool:
        return True


_original_init = middleware.RateLimitMiddleware.__init__


def _init_without_limit(self, app, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    _original_init(self, app, *args, **kwargs)
    self.rate_limiter = _AlwaysAllowed()


middleware.RateLimitMiddleware.__init__ = _init_without_limit  # type: ignore[method-assign]

if __name__ == "__main__":
    script = Path.cwd() / "anp_proxy.py"
    sys.argv = [str(script), *sys.argv[1:]]
    runpy.run_path(str(script), run_name="__main__")
