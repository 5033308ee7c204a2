"""Meta-tests of the zoo's first generation (full attention, chatterbot base; the old reference format):
the same health run and assertions as tests/test_meta_zoo.py, in a file of its own so that pytest-xdist's
``--dist loadfile`` runs the two generations on different workers."""

from __future__ import annotations

import pytest

from test_meta_zoo import check_zoo_entry
from zoo_selection import judged_entries

pytest_plugins = ["pytester"]


@pytest.mark.parametrize("entry", judged_entries("dialogue"), ids=lambda e: e.name)
def test_first_generation_checkpoint_fails_exactly_its_intended_checks(pytester, tmp_path, entry):
    check_zoo_entry(pytester, tmp_path, entry)
