"""Where a clone of ttt-checks keeps what the package reads beside its code.

The health checks (``tests_gpu/``), the committed fixtures (speech, the reference zoo) and the
docs live in the repository, next to the package; an editable install, as ``make`` sets up,
reads them from there. Defined once so that no module counts parent directories itself.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "fixtures"
ZOO_DIR = FIXTURES / "zoo"
SPEECH_FIXTURES = FIXTURES / "speech"
HEALTH_TESTS = REPO_ROOT / "tests_gpu"
DOCS = REPO_ROOT / "docs"
REPORTS = REPO_ROOT / "reports"
# The embedded default: the zoo checkpoint a run without --ckpt checks (issue 25: the local-attention
# model whose benefit is test-time training).
DEFAULT_CHECKPOINT = "healthy-recall"
