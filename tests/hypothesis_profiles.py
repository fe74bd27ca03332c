"""Hypothesis profiles (a pytest plugin: `-p hypothesis_profiles` in pyproject.toml).

The suite runs "default": bounded, so CI stays fast. For a long fuzzing run of the
property and stateful tests (protocol core, parser, SASL mechanisms, encoder):

    pytest --hypothesis-profile=long tests/protocol tests/sasl

and `--hypothesis-profile=soak` for an overnight one.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, stateful_step_count=25)
settings.register_profile(
    "long",
    deadline=None,
    max_examples=5_000,
    stateful_step_count=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "soak",
    deadline=None,
    max_examples=200_000,
    stateful_step_count=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")
