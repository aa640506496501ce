"""Test configuration shared by the whole suite."""

import os

# Triton reads this when its kernels are defined, so it must be set before
# lossgrad's Triton modules are imported by any test.
os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
