"""``ttt-checks trend`` on real training runs of the reference model, one per kind of fault.

Every run resumes the zoo's healthy-seed0 fine-tune (the committed ``base/`` and its TTT tensors)
for a few tens of steps on one thread, and saves a checkpoint every ``EVERY`` steps from
``finetune_ttt``'s ``on_step`` hook. A fault is switched on at a known step by the recipe's
schedule of changes (``train.RecipeChange``), so it appears in a real trajectory, never by editing
a checkpoint afterwards:

- ``healthy``: nothing changes;
- ``gate_push``: from ``GATE_AT`` an L2 penalty on alpha with a 100x alpha learning rate (a
  regulariser switched on mid-run): the gates fall while the TTT weights stay put;
- ``outer_lr``: from ``LR_AT`` the outer learning rate of the TTT weights is 10000x: the outer
  update blows the TTT weights up and the inner losses explode, while the inner step size
  (``base_lr``) never changes;
- ``constant_then_lr``: the save drops ``ttt_norm_bias`` from every checkpoint (a setup fault:
  ``checkpoint_keys`` fails from the first checkpoint on), and from ``LATE_LR_AT`` the same outer
  lr jump.

Each checkpoint is gated in-process by the HealthRun and report writer the pytest plugin uses
(no gating sweep, so no ASR). The trend must name the step the failure appeared, the checkpoint
to keep, the constant failure once, and a cause that fits the fault.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from ttt_checks.runs import trend

EVERY = 10
GATE_AT = 30  # the penalty acts on the steps after checkpoint_000030 was saved
LR_AT = 30
LATE_LR_AT = 20
LR_FACTOR = 1e4
CHECKS = ("checkpoint_keys", "checkpoint_finite", "figure5_finite", "figure5_bounded", "figure5_ordering",
          "figure5_improvement", "inner_step_size", "gate_stats", "ttt_helps", "dead_parameters")
DROPPED = "ttt_norm_bias"  # what the faulty save of constant_then_lr leaves out


@dataclass
class Trajectory:
    """One gated training run: where it is, and what the training measured as it went."""

    run_dir: Path
    reports: Path
    steps: int
    gate: dict[int, float] = field(default_factory=dict)  # step -> mean tanh(alpha), measured in training
    weight_norm: dict[int, float] = field(default_factory=dict)  # step -> norm of all TTT weights (alpha left out)


def _train(root: Path, name: str, steps: int, changes: tuple, drop: str | None = None) -> Trajectory:
    """Resume healthy-seed0 with ``changes``, saving every EVERY steps into root/name/run."""
    import torch

    from ttt_checks.models.reference.checkpoint import load_checkpoint, save_ttt, ttt_tensors
    from ttt_checks.models.reference.corpus import DialogueCorpus
    from ttt_checks.models.reference.train import FinetuneRecipe, finetune_ttt
    from ttt_checks.paths import ZOO_DIR
    from ttt_checks.ttt.gate import effective_gate

    torch.set_num_threads(1)
    loaded = load_checkpoint(ZOO_DIR / "healthy-seed0")
    recipe = FinetuneRecipe(steps=steps, batch=4, seq_len=128, warmup=1, lr=3e-4, alpha_lr=3e-4, changes=changes,
                            layers=tuple(loaded.decoder_config.ttt_layers), alpha_init=loaded.decoder_config.alpha_init)
    out = Trajectory(root / name / "run", root / name / "reports", steps)

    def save(done: int, model) -> None:
        with torch.no_grad():
            alphas = [p for n, p in model.named_parameters() if n.endswith(".ttt.alpha")]
            out.gate[done] = float(effective_gate(torch.cat([a.detach() for a in alphas])).mean())
            weights = [p for n, p in model.named_parameters() if ".ttt." in n and not n.endswith(".ttt.alpha")]
            out.weight_norm[done] = float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in weights)))
        if done % EVERY:
            return
        tensors = {k: v for k, v in ttt_tensors(model).items() if not (drop and k.endswith(drop))}
        folder = out.run_dir / "checkpoints" / f"checkpoint_{done:06d}"
        save_ttt(None, folder, ZOO_DIR / "base", int(loaded.config["ttt_init_seed"]), tensors=tensors,
                 decoder_config=model.config, extra={"name": folder.name, "recipe": asdict(recipe), "corpus_split_seed": 0})

    finetune_ttt(loaded.model, DialogueCorpus.load(seed=0), recipe, on_step=save)
    return out


def _gate(trajectory: Trajectory) -> None:
    """Gate every checkpoint in-process: HealthRun judges CHECKS, write_report writes metrics.json."""
    from ttt_checks import checks as health
    from ttt_checks.models.base import LEARNED
    from ttt_checks.models.reference.adapter import ReferenceAdapter
    from ttt_checks.report import write_report
    from ttt_checks.run import HealthRun, RunOptions
    from ttt_checks.runs.discovery import checkpoint_name, find_checkpoints

    thresholds = health.load_thresholds(Path(__file__).resolve().parents[1] / "pyproject.toml")
    for ckpt in find_checkpoints(trajectory.run_dir):
        report = trajectory.reports / checkpoint_name(ckpt)
        run = HealthRun(ReferenceAdapter(ckpt), RunOptions(report_dir=report, gates=[0.0, LEARNED], max_positions=128,
                                                           thresholds=thresholds))
        for check in CHECKS:
            run.judge(check)
        write_report(run.metrics(), report)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Trajectory]:
    """The four gated trajectories, trained and gated once per session (about a minute on one thread)."""
    from ttt_checks.models.reference.train import RecipeChange

    root = tmp_path_factory.mktemp("trend-causes")
    t0 = time.perf_counter()
    out = {
        "healthy": _train(root, "healthy", 40, ()),
        "gate_push": _train(root, "gate_push", 60, (RecipeChange(GATE_AT, alpha_lr_factor=100.0, alpha_l2=30.0),)),
        "outer_lr": _train(root, "outer_lr", 60, (RecipeChange(LR_AT, lr_factor=LR_FACTOR),)),
        "constant_then_lr": _train(root, "constant_then_lr", 40, (RecipeChange(LATE_LR_AT, lr_factor=LR_FACTOR),), drop=DROPPED),
    }
    for trajectory in out.values():
        _gate(trajectory)
    print(f"trend-causes trajectories: {time.perf_counter() - t0:.0f} s")
    return out


def _trend(trajectory: Trajectory, out: Path, capsys) -> tuple[int, dict, str, str]:
    """(exit code, trend.json, printed output, trend.html) of ``ttt-checks trend`` on one run."""
    from ttt_checks.cli import main

    capsys.readouterr()
    code = main(["trend", str(trajectory.run_dir), "--out", str(out), "--reports", str(trajectory.reports)])
    return code, json.loads((out / "trend.json").read_text()), capsys.readouterr().out, (out / "trend.html").read_text()


FIX_WITH_VALUES = re.compile(r"\b(lower|raise)\s+\S+\s+from\s+(-?[\d.e+-]+)\s+(?:back\s+)?to\s+(?:at most\s+|at least\s+)?(-?[\d.e+-]+)")


def _contradictions(text: str) -> list[str]:
    """Fixes whose direction disagrees with their own numbers ("lower X from 1 to 4")."""
    bad = []
    for verb, a, b in FIX_WITH_VALUES.findall(text):
        if (verb == "lower") != (float(b) < float(a)):
            bad.append(f"{verb} from {a} to {b}")
    return bad


def _step(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def test_the_faults_are_real_and_appear_where_the_schedule_puts_them(runs):
    """Measured during training: the gate push makes the gates fall, the outer lr blows the TTT
    weights up, each only after its change step; the healthy run moves neither."""
    healthy, push, lr, late = runs["healthy"], runs["gate_push"], runs["outer_lr"], runs["constant_then_lr"]
    assert all(abs(healthy.gate[s] / healthy.gate[1] - 1) < 0.05 for s in healthy.gate)
    assert all(abs(healthy.weight_norm[s] / healthy.weight_norm[1] - 1) < 0.05 for s in healthy.weight_norm)
    assert abs(push.gate[GATE_AT] / healthy.gate[GATE_AT] - 1) < 0.05  # nothing changed before the penalty
    assert abs(push.gate[GATE_AT + EVERY]) < 0.5 * push.gate[GATE_AT], push.gate
    assert abs(push.weight_norm[GATE_AT + EVERY] / push.weight_norm[GATE_AT] - 1) < 0.05  # the weights stay put
    assert lr.weight_norm[LR_AT] < 1.05 * lr.weight_norm[1]
    assert lr.weight_norm[LR_AT + EVERY] > 10 * lr.weight_norm[LR_AT], lr.weight_norm
    assert late.weight_norm[LATE_LR_AT + EVERY] > 10 * late.weight_norm[LATE_LR_AT], late.weight_norm


def test_healthy_run_keeps_the_newest_and_names_no_cause(runs, tmp_path, capsys):
    code, data, out, _ = _trend(runs["healthy"], tmp_path / "t", capsys)
    summary = data["summary"]
    assert code == 0 and summary["newest_healthy"] is True, out
    assert summary["keep"]["name"] == "checkpoint_000040" and summary["training_broke"] is False
    assert summary["constant_failures"] == [] and summary["cause"] is None
    assert "every gated checkpoint is healthy" in summary["sentence"]


def test_gate_push_is_named_as_the_gates_falling_at_the_step_it_began(runs, tmp_path, capsys):
    code, data, out, page = _trend(runs["gate_push"], tmp_path / "t", capsys)
    summary, cause = data["summary"], data["summary"]["cause"]
    broke = GATE_AT + EVERY
    assert code == 1
    assert summary["keep"]["name"] == f"checkpoint_{GATE_AT:06d}" and summary["broke_at"] == broke
    assert summary["appeared"]["gate_stats"] == broke and summary["constant_failures"] == []
    assert cause["kind"] == "gate_fell" and cause["from_step"] == GATE_AT and cause["step"] == broke
    assert f"the gates fell from step {broke}" in cause["cause"]
    [(layer, gate)] = cause["gates"].items()
    assert gate["fell"] and abs(gate["after"]) < 0.5 * gate["before"]
    assert cause["norms"]["total_ratio"] < trend.NORM_GROWTH  # the TTT weights did not jump: not an outer-lr fault
    assert "base_lr" not in cause["fix"] and "alpha" in cause["fix"]
    assert f"keep checkpoint_{GATE_AT:06d}" in out and f"cause (step {broke} vs {GATE_AT})" in out
    assert "Verdict of the run" in page and "the gates fell" in page


def test_outer_lr_jump_is_named_as_the_outer_update_not_the_inner_lr(runs, tmp_path, capsys):
    """The held-out failure (b): the inner losses explode while base_lr never changed. One
    checkpoint alone blames the inner lr; the run names the outer update that grew the weights."""
    code, data, out, _ = _trend(runs["outer_lr"], tmp_path / "t", capsys)
    summary, cause = data["summary"], data["summary"]["cause"]
    broke = LR_AT + EVERY
    assert code == 1
    assert summary["keep"]["name"] == f"checkpoint_{LR_AT:06d}" and summary["broke_at"] == broke
    assert summary["first_red"]["figure5_bounded"]["red_from"] == broke
    assert cause["kind"] == "outer_update" and cause["step"] == broke
    assert cause["base_lr"]["changed"] == {} and set(cause["base_lr"]["after"].values()) == {1.0}
    assert cause["norms"]["total_ratio"] > 10, cause["norms"]
    assert cause["inner_losses"]["layers.3.ttt"]["state"] == "exploded"
    assert cause["inner_losses"]["layers.3.ttt"]["max_smoothed_after"] > 10 * cause["inner_losses"]["layers.3.ttt"]["max_smoothed_before"]
    assert (f"the inner losses exploded from step {broke}" in cause["cause"]
            and "while the inner step size (decoder.ttt.base_lr 1) did not change" in cause["cause"]
            and f"the TTT weights' norm grew by {cause['norms']['total_ratio']:.3g}x between {LR_AT} and {broke}" in cause["cause"])
    assert "outer learning rate" in cause["fix"] and "recipe.lr" in cause["fix"]
    # a single checkpoint's diagnosis names the outer updates too: every trained TTT tensor grew, each by its own factor
    newest = data["points"][-1]
    assert newest["top_rule"] == "ttt_tensor_off_scale", newest["diagnosis"]
    assert "blown up by the outer updates" in newest["diagnosis"] and "lower the outer learning rate" in newest["diagnosis"]
    assert "lower decoder.ttt.base_lr" not in newest["diagnosis"]
    assert "lower decoder.ttt.base_lr" not in summary["sentence"] and "lower decoder.ttt.base_lr" not in out


def test_a_constant_failure_is_set_aside_once_and_the_later_fault_still_found(runs, tmp_path, capsys):
    code, data, out, page = _trend(runs["constant_then_lr"], tmp_path / "t", capsys)
    summary, cause = data["summary"], data["summary"]["cause"]
    broke = LATE_LR_AT + EVERY
    assert all("checkpoint_keys" in p["failing_checks"] and not p["healthy"] for p in data["points"])
    assert code == 1  # the newest still fails checkpoint_keys, whatever caused it
    assert summary["constant_failures"] == ["checkpoint_keys"]
    assert summary["keep"]["name"] == f"checkpoint_{LATE_LR_AT:06d}" and summary["broke_at"] == broke
    assert "checkpoint_keys" not in summary["appeared"]
    assert cause["kind"] == "outer_update" and cause["step"] == broke
    assert summary["sentence"].count("checkpoint_keys") == 1
    assert "constant over the run: checkpoint_keys" in summary["sentence"] and "fixing separately" in summary["sentence"]
    assert "constant over the run, still to fix separately" in out and "Constant over the run" in page


def test_recommendations_over_a_run_never_contradict_their_numbers(runs, tmp_path, capsys):
    for name, trajectory in runs.items():
        _, data, out, _ = _trend(trajectory, tmp_path / name, capsys)
        texts = [data["summary"]["sentence"], out, *(p["diagnosis"] for p in data["points"])]
        assert not [bad for text in texts for bad in _contradictions(text)], name


def test_contradiction_finder_finds_the_held_out_wording():
    """The test above is only as good as its parser: it must catch the held-out fix."""
    assert _contradictions("lower ttt.base_lr from 1 to 4") == ["lower from 1 to 4"]
    assert _contradictions("lower decoder.ttt.base_lr from 1 to 0.1; raise x from 2 back to 3") == []
    assert _contradictions("raise x from 2 to at most 1") == ["raise from 2 to 1"]


def test_trend_json_records_norms_per_tensor(runs):
    """metrics.json's ttt_tensor_norms (written with checkpoint_finite) feed the trend's norm column."""
    reports = runs["outer_lr"].reports
    metrics = json.loads((reports / f"checkpoint_{LR_AT:06d}" / "metrics.json").read_text())
    norms = metrics["ttt_tensor_norms"]
    assert "layers.3.ttt.ttt.weights.0" in norms and "layers.3.ttt.alpha" in norms
    assert all(v is None or v >= 0 for v in norms.values())
    after = json.loads((reports / f"checkpoint_{LR_AT + EVERY:06d}" / "metrics.json").read_text())["ttt_tensor_norms"]
    assert after["layers.3.ttt.ttt.weights.0"] > 10 * norms["layers.3.ttt.ttt.weights.0"]


# -- pieces, on small point lists and a three-step fine-tune ----------------------------------------


def _point(step: int, failing: list[str], gate: float = 0.1, base_lr: float = 1.0, norm: float = 5.0,
           smoothed: float = 1.2) -> trend.Point:
    return trend.Point(step=step, name=f"checkpoint_{step:06d}", checkpoint="", report_dir="", healthy=not failing,
                       complete=True, failing_checks=failing, gate_tanh={"l0": gate}, gate_init_tanh={"l0": 0.1},
                       figure5={"l0": {"l0": smoothed - 0.1, "max_smoothed": smoothed}}, outer_learned=1.85,
                       base_lr={"l0": base_lr}, ttt_norms={"l0.weights.0": norm, "l0.wq.weight": norm, "l0.alpha": gate})


def test_held_out_a_talk_failing_everywhere_is_set_aside_and_the_gate_fall_still_keeps_a_checkpoint():
    """Held-out failure (a): the base never talks, so talk_base and talk_learned fail in every
    checkpoint; the gates are pushed down from 400. Before, no checkpoint was healthy and none was kept."""
    talk = ["talk_base", "talk_learned"]
    points = [_point(100, [*talk, "ttt_helps"]), _point(200, list(talk)), _point(300, list(talk)),
              _point(400, [*talk, "gate_stats"], gate=0.01), _point(500, [*talk, "gate_stats", "ttt_helps"], gate=0.005)]
    summary = trend.summarise(points, [])
    assert summary["constant_failures"] == talk
    assert summary["failing_at_start"] == {"ttt_helps": 200}  # not yet helping at 100: not a failure that appeared
    assert summary["appeared"] == {"gate_stats": 400, "ttt_helps": 500}
    assert summary["keep"] == {"name": "checkpoint_000300", "step": 300, "why": "the last checkpoint before a failure appeared at 400"}
    assert summary["cause"]["kind"] == "gate_fell" and "the gates fell from step 400" in summary["cause"]["cause"]
    assert summary["sentence"].count("talk_base") == 1 and "constant over the run: talk_base, talk_learned" in summary["sentence"]
    assert summary["newest_healthy"] is False and summary["training_broke"] is True


def test_a_changed_base_lr_is_named_and_its_fix_goes_back_the_right_way():
    up = trend.explain_change(_point(10, []), _point(20, ["figure5_bounded"], base_lr=10.0, smoothed=30.0))
    assert up["kind"] == "base_lr_changed" and "ttt.base_lr 1 -> 10" in up["cause"]
    assert up["fix"].startswith("keep checkpoint_000010; lower ttt.base_lr from 10 back to 1")
    down = trend.explain_change(_point(10, [], base_lr=1.0), _point(20, ["figure5_improvement"], base_lr=1e-4))
    assert down["kind"] == "base_lr_changed" and "raise ttt.base_lr from 0.0001 back to 1" in down["fix"]


def test_weights_that_grew_under_an_unchanged_base_lr_are_the_outer_update_and_steady_ones_are_not():
    grown = trend.explain_change(_point(10, []), _point(20, ["figure5_bounded"], norm=200.0, smoothed=40.0))
    assert grown["kind"] == "outer_update" and grown["norms"]["total_ratio"] == pytest.approx(40.0)
    assert "l0.alpha" not in grown["norms"]["grown"]  # the gate is judged as a gate, not as a weight
    steady = trend.explain_change(_point(10, []), _point(20, ["figure5_bounded"], norm=5.1, smoothed=40.0))
    assert steady["kind"] == "inner_losses_lr_unchanged" and "do not change ttt.base_lr" in steady["fix"]
    nothing = trend.explain_change(_point(10, []), _point(20, ["ttt_helps"]))
    assert nothing["kind"] is None and nothing["fix"] == ""


def test_one_checkpoint_alone_keeps_nothing_it_cannot_vouch_for():
    assert trend.summarise([_point(10, ["talk_base"])], [])["keep"] is None
    assert trend.summarise([_point(10, [])], [])["keep"]["name"] == "checkpoint_000010"


def test_recipe_changes_apply_from_their_step_and_read_back_from_config_json():
    import torch

    from ttt_checks.models.reference.checkpoint import load_checkpoint
    from ttt_checks.models.reference.corpus import DialogueCorpus
    from ttt_checks.models.reference.train import FinetuneRecipe, RecipeChange, active_change, finetune_ttt
    from ttt_checks.paths import ZOO_DIR

    changes = (RecipeChange(5, lr_factor=2.0), RecipeChange(2, alpha_l2=1.0))
    recipe = FinetuneRecipe(changes=changes)
    assert [c.step for c in recipe.changes] == [2, 5]
    assert FinetuneRecipe(**json.loads(json.dumps(asdict(recipe)))).changes == recipe.changes  # as config.json stores it
    assert active_change(recipe.changes, 1) is None and active_change(recipe.changes, 4).alpha_l2 == 1.0
    assert active_change(recipe.changes, 9).lr_factor == 2.0 and active_change(recipe.changes, 9).alpha_l2 is None
    with pytest.raises(ValueError):
        RecipeChange(-1)

    torch.set_num_threads(1)

    def steps_moved(changes: tuple) -> list[float]:
        """How far the TTT weights moved in each of three steps."""
        model = load_checkpoint(ZOO_DIR / "healthy-seed0").model
        weights = [p for n, p in model.named_parameters() if ".ttt." in n and not n.endswith(".ttt.alpha")]
        seen = [torch.cat([p.detach().flatten().clone() for p in weights])]

        def record(done: int, _model) -> None:
            seen.append(torch.cat([p.detach().flatten().clone() for p in weights]))
        finetune_ttt(model, DialogueCorpus.load(seed=0), FinetuneRecipe(steps=3, batch=2, seq_len=32, warmup=1, lr=3e-4,
                                                                        changes=changes), on_step=record)
        return [float((b - a).norm()) for a, b in zip(seen, seen[1:])]

    plain, jumped = steps_moved(()), steps_moved((RecipeChange(2, lr_factor=100.0),))
    assert jumped[:2] == pytest.approx(plain[:2], rel=1e-3)  # the change is not in force before its step
    assert jumped[2] > 20 * plain[2], (plain, jumped)  # Adam's step scales with the lr


def test_a_check_a_report_did_not_judge_neither_passed_nor_failed_there():
    """A -k selection that left gate_stats out of checkpoint 200 must not make its failure at 300
    one that "appeared" after passing, nor a constant one lose that status."""
    points = [_point(100, ["gate_stats", "talk_base"]), _point(200, ["talk_base"]), _point(300, ["gate_stats", "talk_base"])]
    points[1].passing_checks = ["ttt_helps"]  # gate_stats not judged at 200
    summary = trend.summarise(points, [])
    assert summary["constant_failures"] == ["gate_stats", "talk_base"] and summary["appeared"] == {}
    assert summary["keep"]["name"] == "checkpoint_000300" and summary["training_broke"] is False
    points[1].passing_checks = ["gate_stats", "ttt_helps"]  # judged and passed at 200: it recovered, then failed again
    summary = trend.summarise(points, [])
    assert summary["constant_failures"] == ["talk_base"] and summary["appeared"] == {"gate_stats": 300}
    assert summary["failing_at_start"] == {"gate_stats": 200} and summary["keep"]["name"] == "checkpoint_000200"


def test_a_stale_diagnosis_stored_in_a_report_is_not_repeated(runs, tmp_path, capsys):
    """A report written by an older version stored the held-out advice ("lower ttt.base_lr from 1
    to 4", from a probe at the grid's edge); the trend diagnoses each checkpoint again."""
    import shutil

    trajectory = runs["outer_lr"]
    reports = tmp_path / "reports"
    shutil.copytree(trajectory.reports, reports)
    newest = reports / f"checkpoint_{trajectory.steps:06d}" / "metrics.json"
    metrics = json.loads(newest.read_text())
    stale = "Inner learning rate far too high -> lower ttt.base_lr from 1 to 4"
    metrics["diagnosis"] = {"healthy": False, "summary": stale,
                            "findings": [{"rule": "inner_lr_too_high", "fix": "lower ttt.base_lr from 1 to 4"}]}
    newest.write_text(json.dumps(metrics))
    copy = Trajectory(trajectory.run_dir, reports, trajectory.steps)
    _, data, out, page = _trend(copy, tmp_path / "t", capsys)
    assert "from 1 to 4" not in out and "from 1 to 4" not in page and "from 1 to 4" not in json.dumps(data)
    assert data["points"][-1]["top_rule"] == "ttt_tensor_off_scale"
