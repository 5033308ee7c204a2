"""Which zoo checkpoints `make test` judges and rebuilds, and which only `make zoo-check` does.

The zoo has two generations (``ttt_checks.models.reference.zoo.GENERATIONS``): the embedded default's
(recall) and the first one, kept so checkpoints in the old reference format stay judged. Judging one
checkpoint with the whole health suite costs ~25 s of one core and rebuilding a long fine-tune minutes,
so `make test` (a 15-minute budget on 2 cores) judges every entry of the default's generation and a
representative subset of the first (its default, and each kind of fault the second generation has no
counterpart for), and rebuilds the entries marked ``rebuilt_by_tests``. ``TTT_CHECKS_FULL_ZOO=1``
(`make zoo-check`, documented in docs/health-checks.md) takes every entry for both.
"""

from __future__ import annotations

import os

from ttt_checks.models.reference.zoo import (DEFAULT_CHECKPOINT, DIALOGUE_DEFAULT, ZooEntry, generation_entries,
                                              zoo_entries)

FULL = os.environ.get("TTT_CHECKS_FULL_ZOO") == "1"

# The first generation in `make test`: its default (the old format's healthy checkpoint) and the faults the
# recall generation does not reproduce (the user's collapse recipe, the saturated step, the zoo's one entry
# whose outputs are constant) or reproduces differently (missing inner weights read as untrained).
DIALOGUE_JUDGED = (DIALOGUE_DEFAULT, "gate-collapse", "lr-past-optimum", "ttt-ignores-input", "missing-keys")


def judged_entries(generation: str = "all") -> list[ZooEntry]:
    """Entries of ``generation`` (``recall``, ``dialogue`` or ``all``) the meta-tests run the whole health suite on."""
    recall = set(generation_entries("recall"))
    wanted = set(generation_entries(generation))
    return [e for e in zoo_entries() if e.name in wanted and (FULL or e.name in recall or e.name in DIALOGUE_JUDGED)]


def rebuilt_entries() -> list[ZooEntry]:
    """Entries the zoo-rebuild test re-creates from their committed base."""
    return [e for e in zoo_entries() if FULL or e.rebuilt_by_tests]


def remeasured_entries() -> list[ZooEntry]:
    """Entries whose committed measurements are reproduced: both defaults and the rebuilt fine-tunes (an edit's
    numbers follow from its committed tensors, which the meta-tests judge)."""
    defaults = {DEFAULT_CHECKPOINT, DIALOGUE_DEFAULT}
    return [e for e in zoo_entries() if FULL or e.name in defaults or (e.rebuilt_by_tests and e.how == "trained")]
