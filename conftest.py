"""Repository-root conftest: environment defaults every test relies on.

NO_TORCH_COMPILE must be set before moshi is imported (otherwise moshi torch.compiles on CPU);
HF_HUB_OFFLINE makes any forgotten hub download fail at once instead of hanging.
"""

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests run the float64 oracle (a Python loop over tokens): no per-example deadline.
settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=40, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "default"))
