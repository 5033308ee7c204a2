"""pytest plugin of ttt-checks (registered through the ``pytest11`` entry point).

Registers the markers the suite uses so ``--strict-markers`` runs accept them from any
directory once the package is installed.
"""

from __future__ import annotations

import pytest

MARKERS = {
    "gpu": "health checks run against --ckpt (CPU works; named for how clusters run them)",
    "slow": "long-running tests (training, long sequences)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
