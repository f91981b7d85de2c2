"""Hypothesis profiles and strategies shared by the test suites.

Profiles: ``dev`` (the default: quick, so ``make test`` is run often) and ``thorough``
(many more examples, for nightly or torture runs); pick one with
``CAS_HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough",
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def load_profile() -> None:
    settings.load_profile(os.environ.get("CAS_HYPOTHESIS_PROFILE", "dev"))


#: Bytes of any size, biased to the edges: empty, one byte, around the chunking threshold.
small_bytes = st.binary(min_size=0, max_size=4096)
