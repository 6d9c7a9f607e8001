"""The one start-up error every host path and both drivers raise."""

from __future__ import annotations


class StartupError(Exception):
    """Start-up cannot proceed (port in use, bad certificate, app lifespan failed, gave up
    connecting); ``str`` is the one line the user sees."""
