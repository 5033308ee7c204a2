"""Settings only the loaded model can refute: a TTT layer named on the command line that the
checkpoint does not have must fail the checks that read layers, with the layers it does have."""

from __future__ import annotations

import pytest

from ttt_checks.models.registry import resolve
from ttt_checks.run import HealthRun, RunOptions


@pytest.fixture(scope="module")
def default_adapter():
    return resolve(None)


@pytest.mark.parametrize("check", ["figure5_collected", "figure5_ordering", "gate_stats"])
def test_bad_input_ttt_layers_the_model_lacks_fail_every_layer_check(default_adapter, tmp_path, check):
    run = HealthRun(default_adapter, RunOptions(report_dir=tmp_path, ttt_layers=["block7"], max_positions=32))
    verdicts = run.judge(check)
    assert verdicts and not any(v.ok for v in verdicts)
    assert "--ttt-layers ['block7']: the model has no such TTT layer" in verdicts[0].explanation
    assert "it has ['" in verdicts[0].explanation  # names the layers there are


def test_bad_input_ttt_layers_by_index_select_an_existing_layer(default_adapter, tmp_path):
    """The counter-case: a layer the model has (by its block index) is measured, not refused."""
    index = str(default_adapter.ttt_layers()[0].index)
    run = HealthRun(default_adapter, RunOptions(report_dir=tmp_path, ttt_layers=[index], max_positions=32))
    assert [i.index for i in run.layers] == [int(index)]
