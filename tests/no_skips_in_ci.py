"""pytest plugin (loaded by addopts in pyproject.toml): suite-wide rules."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """In CI nothing may be skipped: a test skipped for a missing client program would
    hide a missing install step in scripts/test, so it fails there instead."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI: {report.longrepr!r}"
    return outcome
