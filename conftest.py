"""Repository-root conftest: environment defaults every test relies on.

NO_TORCH_COMPILE must be set before moshi is imported (otherwise moshi torch.compiles on CPU);
HF_HUB_OFFLINE makes any forgotten hub download fail at once instead of hanging.
"""

import os
import sys


def _share_cores_among_xdist_workers() -> None:
    """Give each xdist worker (and every process it starts) its share of the cores.

    Without this every worker, and every health run a meta-test starts in a subprocess, runs
    torch and CTranslate2 with one thread per core: two workers on two cores then run four
    spinning OpenMP threads, and a 16 s health run took 84 s in the full suite. OMP_NUM_THREADS
    is inherited by subprocesses; torch, if a plugin imported it already, is told directly. A
    value the user set is kept.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // workers)
    os.environ["OMP_NUM_THREADS"] = str(share)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(share)


_share_cores_among_xdist_workers()
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
