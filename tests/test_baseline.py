"""Baselines: a metric that got worse beyond its tolerance is a regression, shown old vs new."""

import json

import pytest

from ttt_checks.checks import baseline


def metrics(mean_l0=0.8, improvement=0.1, words=12.0, loss=2.0):
    return {
        "verdicts": {},
        "figure5": {"layers.3.ttt": {"mean_l0": mean_l0, "improvement_abs": improvement}},
        "outer_loss": {"learned": loss},
        "layers": [{"name": "layers.3.ttt", "gate_mean_tanh": 0.3}],
        "sweep": [{"label": "learned", "words": words}],
    }


def test_identical_metrics_pass():
    v = baseline.compare(metrics(), metrics(), 0.1)
    assert v.ok and v.details["compared"] == 5


@pytest.mark.parametrize("changed, name", [
    (dict(mean_l0=1.0), "figure5.layers.3.ttt.mean_l0"),
    (dict(improvement=0.05), "figure5.layers.3.ttt.improvement_abs"),
    (dict(words=3.0), "sweep.learned.words"),
    (dict(loss=2.5), "outer_loss.learned"),
])
def test_worse_metric_is_a_regression_with_old_and_new(changed, name):
    v = baseline.compare(metrics(**changed), metrics(), 0.1)
    assert not v.ok
    assert [r["metric"] for r in v.details["regressions"]] == [name]
    assert "->" in v.explanation and name in v.explanation


def test_better_metric_is_not_a_regression():
    assert baseline.compare(metrics(mean_l0=0.5, improvement=0.2, words=30, loss=1.5), metrics(), 0.1).ok


def test_per_metric_tolerance_overrides_the_default():
    assert baseline.compare(metrics(words=9.0), metrics(), 0.1, {"sweep.*.words": 0.5}).ok
    assert not baseline.compare(metrics(words=9.0), metrics(), 0.1).ok


def test_bad_input_unrelated_baseline_cannot_pass():
    v = baseline.compare(metrics(), {"verdicts": {}}, 0.1)
    assert not v.ok and "cannot measure" in v.explanation


def test_bad_input_unreadable_baseline_says_how_to_make_one(tmp_path):
    with pytest.raises(baseline.BaselineError, match="--update-baseline"):
        baseline.load_baseline(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(baseline.BaselineError, match="not a readable"):
        baseline.load_baseline(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(baseline.BaselineError, match="not a ttt-checks metrics.json"):
        baseline.load_baseline(tmp_path / "other.json")
