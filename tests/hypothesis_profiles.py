"""Hypothesis profiles: a fast default, and a thorough run selected by the environment.

``ANPX_HYPOTHESIS=thorough pytest`` multiplies every property test's examples by
:data:`THOROUGH_FACTOR` (tests that set ``max_examples`` do so through :func:`examples`,
which a profile's own ``max_examples`` would not override). The default profile, ``fast``,
runs each test's own count, which keeps the whole suite at a couple of minutes.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

ENV = "ANPX_HYPOTHESIS"
PROFILES = ("fast", "thorough")
THOROUGH_FACTOR = 10
_DEFAULT_EXAMPLES = 100  # hypothesis's own default, for tests that do not set a count


def profile_name() -> str:
    name = os.environ.get(ENV, "fast").strip().lower() or "fast"
    if name not in PROFILES:
        raise ValueError(f"{ENV}={name!r}: expected one of {', '.join(PROFILES)}")
    return name


def scale() -> int:
    return THOROUGH_FACTOR if profile_name() == "thorough" else 1


def examples(count: int) -> int:
    """A test's ``max_examples``, scaled by the selected profile."""
    return count * scale()


def register() -> None:
    settings.register_profile("fast", deadline=None)
    settings.register_profile(
        "thorough",
        deadline=None,
        max_examples=_DEFAULT_EXAMPLES * THOROUGH_FACTOR,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile(profile_name())
