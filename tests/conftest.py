"""Test-wide setup: the hypothesis profile (tests/hypothesis_profiles.py)."""

from __future__ import annotations

from .hypothesis_profiles import ENV, profile_name, register

register()


def pytest_report_header() -> str:
    return f"hypothesis profile: {profile_name()} (select with {ENV}=fast|thorough)"
