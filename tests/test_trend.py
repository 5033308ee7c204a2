"""``ttt-checks trend`` on a real training trajectory, and its pieces on small metrics.

The trajectory: ONE training of a tiny Moshi with TTT (tests/moshi_fixtures.py), saving a
checkpoint every ``EVERY`` steps in the moshi-finetune layout. From step ``PENALTY_FROM`` on, a
penalty on tanh(alpha)^2 is added to the outer loss (a misconfigured gate regulariser),
so the gates really fall during training; nothing is edited after the fact. Each checkpoint is
gated in-process by the same HealthRun and report writer the pytest plugin uses (checks:
finite weights and inner losses, gates, outer loss; no sweep, so no ASR), the reports sit in a
watch-style folder, and the trend must name the last healthy checkpoint and the step it broke.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ttt_checks.runs import trend  # noqa: E402

EVERY = 40
STEPS = 200
PENALTY_FROM = 120  # the penalty acts on the steps after checkpoint_000120 was saved
PENALTY = 100.0
CHECKS = ("checkpoint_finite", "figure5_finite", "figure5_bounded", "gate_stats", "ttt_helps")


def _train_with_gate_penalty(root: Path) -> tuple[Path, Path, dict]:
    """Train once; save every EVERY steps; from PENALTY_FROM on push the gates down."""
    import torch

    import moshi_fixtures as mf
    from ttt_checks.models.moshi.adapter import MoshiAdapter
    from ttt_checks.models.moshi.model import export_ttt_tensors

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = mf.build_base(root / "base")
    cfg = mf.training_config()
    adapter = MoshiAdapter(mf.write_run(root / "untrained", base, {}, cfg), **base.options)
    lm = adapter.lm
    codes = mf.speech_codes(adapter)
    for p in lm.parameters():
        p.requires_grad_(False)
    params, alphas = [], []
    for h in adapter.loaded.hybrids.values():
        for n, p in h.ttt_block.named_parameters():
            p.requires_grad_(True)
            (alphas if n == "alpha" else params).append(p)
    opt = torch.optim.AdamW([{"params": params, "lr": 3e-3, "weight_decay": 0.0},
                             {"params": alphas, "lr": 3e-2, "weight_decay": 0.0}])
    gen = torch.Generator().manual_seed(0)
    run_dir = root / "run"
    log = {"loss": [], "gate": []}
    lm.train()
    for step in range(1, STEPS + 1):
        starts = torch.randint(0, codes.shape[-1] - 64, (8,), generator=gen)
        x = torch.stack([codes[0, :, s: s + 64] for s in starts.tolist()])
        loss = mf.outer_loss(lm, x)
        if step > PENALTY_FROM:  # the bad regulariser: it rewards a small gate
            loss = loss + PENALTY * sum((torch.tanh(a) ** 2).mean() for a in alphas)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params + alphas, 1.0)
        opt.step()
        log["loss"].append(float(loss.detach()))
        if step % EVERY == 0:
            lm.eval()
            log["gate"].append(float(torch.tanh(torch.cat([a.detach() for a in alphas])).mean()))
            mf.write_run(run_dir, base, export_ttt_tensors(adapter.loaded.hybrids, adapter.loaded.keys, 0.1), cfg, step=step)
            lm.train()
    lm.eval()
    return run_dir, base.dir, {**log, "base": base}


def _gate_in_process(ckpt: Path, base, report_dir: Path) -> None:
    """The plugin's run, minus pytest: HealthRun judges the checks, write_report writes metrics.json."""
    from ttt_checks import checks as health
    from ttt_checks.models.base import LEARNED
    from ttt_checks.models.moshi.adapter import MoshiAdapter
    from ttt_checks.report import write_report
    from ttt_checks.run import HealthRun, RunOptions

    adapter = MoshiAdapter(ckpt, **base.options)
    run = HealthRun(adapter, RunOptions(report_dir=report_dir, gates=[0.0, LEARNED], max_positions=64,
                                        thresholds=health.load_thresholds(Path(__file__).resolve().parents[1] / "pyproject.toml")))
    for check in CHECKS:
        run.judge(check)
    write_report(run.metrics(), report_dir)


@pytest.fixture(scope="session")
def trajectory(tmp_path_factory):
    """(run dir, report root, training log): the gated trajectory, built once."""
    from ttt_checks.runs.discovery import checkpoint_name, find_checkpoints

    root = tmp_path_factory.mktemp("trajectory")
    t0 = time.perf_counter()
    run_dir, _, log = _train_with_gate_penalty(root)
    reports = root / "reports"
    for ckpt in find_checkpoints(run_dir):
        _gate_in_process(ckpt, log["base"], reports / checkpoint_name(ckpt))
    log["seconds"] = time.perf_counter() - t0
    return run_dir, reports, log


def test_trajectory_is_real_and_the_penalty_makes_the_gates_fall(trajectory):
    run_dir, reports, log = trajectory
    from ttt_checks.runs.discovery import find_checkpoints

    assert len(find_checkpoints(run_dir)) == STEPS // EVERY >= 5
    before, after = log["gate"][PENALTY_FROM // EVERY - 1], log["gate"][-1]
    assert after < 0.5 * before, log["gate"]  # measured during the training, not edited


def test_trend_names_the_last_healthy_checkpoint_and_where_it_broke(trajectory, tmp_path, capsys):
    from ttt_checks.cli import main

    run_dir, reports, log = trajectory
    code = main(["trend", str(run_dir), "--out", str(tmp_path / "trend"), "--reports", str(reports)])
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "trend" / "trend.json").read_text())
    summary = data["summary"]
    points = {p["name"]: p for p in data["points"]}
    assert len(points) == STEPS // EVERY and not data["not_gated"]
    healthy_steps = [p["step"] for p in data["points"] if p["healthy"]]
    # every checkpoint saved before the penalty acted is healthy; the newest is not
    assert healthy_steps == list(range(EVERY, PENALTY_FROM + 1, EVERY)), (healthy_steps, out)
    assert code == 1 and summary["newest_healthy"] is False
    assert summary["last_healthy"] == f"checkpoint_{PENALTY_FROM:06d}"
    broke = PENALTY_FROM + EVERY
    assert summary["first_red"]["gate_stats"]["red_from"] == broke
    assert set(summary["gates_began_falling"].values()) == {broke}, summary
    assert f"keep checkpoint_{PENALTY_FROM:06d}" in summary["sentence"] and f"gate_stats failed from {broke}" in summary["sentence"]
    assert f"gates began falling at {broke}" in summary["sentence"]
    # the cause over the run: the gates fell while the TTT weights' norm did not jump (metrics.json ttt_tensor_norms)
    cause = summary["cause"]
    assert cause["kind"] == "gate_fell" and (cause["from_step"], cause["step"]) == (PENALTY_FROM, broke), cause
    assert f"the gates fell from step {broke}" in summary["sentence"] and cause["norms"]["total_ratio"] < trend.NORM_GROWTH
    assert summary["constant_failures"] == [] and summary["keep"]["why"] == f"the last checkpoint before a failure appeared at {broke}"
    newest = data["points"][-1]
    assert newest["top_rule"] == "gate_collapsed"
    assert all(newest["gate_tanh"][l] < newest["gate_init_tanh"][l] for l in newest["gate_tanh"])
    pngs = sorted(p.name for p in (tmp_path / "trend").glob("*.png"))
    assert pngs == ["trend_figure5.png", "trend_gates.png", "trend_norms.png", "trend_outer_words_checks.png"]
    page = (tmp_path / "trend" / "trend.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and f"keep checkpoint_{PENALTY_FROM:06d}" in page
    assert "keep checkpoint" in out


def test_trend_exit_code_is_0_when_the_newest_is_healthy(trajectory, tmp_path):
    """The same run cut before the penalty: its newest checkpoint is healthy."""
    import shutil

    from ttt_checks.cli import main

    run_dir, reports, _ = trajectory
    cut = tmp_path / "run"
    for step in range(EVERY, PENALTY_FROM + 1, EVERY):
        name = f"checkpoint_{step:06d}"
        (cut / "checkpoints").mkdir(parents=True, exist_ok=True)
        (cut / "checkpoints" / name).symlink_to(run_dir / "checkpoints" / name)
    # the reports name the original paths; a copy of the run has none yet: --reports finds nothing
    assert main(["trend", str(cut), "--out", str(tmp_path / "t0"), "--reports", str(tmp_path / "none")]) == 5
    shutil.copytree(reports, tmp_path / "reports")
    for metrics in (tmp_path / "reports").glob("*/metrics.json"):
        data = json.loads(metrics.read_text())
        data["checkpoint"] = data["checkpoint"].replace(str(run_dir), str(cut))
        metrics.write_text(json.dumps(data))
    assert main(["trend", str(cut), "--out", str(tmp_path / "t1"), "--reports", str(tmp_path / "reports")]) == 0


# -- pieces, on small point lists -----------------------------------------------------------------


def _point(step: int, failing: list[str], gate: float) -> trend.Point:
    return trend.Point(step=step, name=f"checkpoint_{step:06d}", checkpoint="", report_dir="", healthy=not failing,
                       complete=True, failing_checks=failing, gate_tanh={"l0": gate}, gate_init_tanh={"l0": 0.1})


def test_first_red_and_red_from_distinguish_a_flicker_from_a_lasting_failure():
    points = [_point(1000, [], 0.2), _point(2000, ["ttt_helps"], 0.2), _point(3000, [], 0.21),
              _point(4000, ["ttt_helps"], 0.18), _point(5000, ["ttt_helps", "gate_stats"], 0.05)]
    reds = trend.first_red(points)
    assert reds["ttt_helps"] == {"first_red": 2000, "red_from": 4000, "red_now": True}
    assert reds["gate_stats"]["red_from"] == 5000
    assert trend.gates_began_falling(points) == {"l0": 4000}
    assert trend.gates_began_falling(points[:4]) == {}  # 0.21 -> 0.18: below the peak, not yet half of it
    summary = trend.summarise(points, [])
    assert summary["last_healthy"] == "checkpoint_003000"
    assert summary["sentence"].startswith("keep checkpoint_003000 (the last checkpoint before a failure appeared at 4000; "
                                          "one that appeared at 2000 passed again later); gates began falling at 4000")
    assert summary["appeared"] == {"ttt_helps": 2000, "gate_stats": 5000} and summary["broke_at"] == 4000


def test_watch_state_reports_are_found(tmp_path):
    run = tmp_path / "run" / "checkpoints" / "checkpoint_000010"
    (run / "consolidated").mkdir(parents=True)
    (run / "consolidated" / "config.json").write_text("{}")
    report = tmp_path / "elsewhere" / "r1"
    report.mkdir(parents=True)
    (report / "metrics.json").write_text(json.dumps({"checkpoint": "x", "verdicts": {"gate_stats": [{"ok": True}]}}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "watch-state.json").write_text(json.dumps(
        {"gated": {str((run / "consolidated").absolute()): {"report_dir": str(report)}}}))
    found = trend.find_reports(tmp_path / "run", [tmp_path / "out"])
    assert found == {str((run / "consolidated").absolute()): report}


def _fake_run(tmp_path: Path, steps: Sequence[int]) -> Path:
    run = tmp_path / "run"
    for step in steps:
        cons = run / "checkpoints" / f"checkpoint_{step:06d}" / "consolidated"
        cons.mkdir(parents=True)
        (cons / "config.json").write_text("{}")
    return run


def _fake_gate(bad_from: int):
    """A gate that writes a metrics.json like the health run's: gate_stats fails from ``bad_from``."""
    def gate(checkpoint: Path, report_dir: Path, baseline) -> int:
        step = trend.step_of(checkpoint.parent.name, 0)
        ok = step < bad_from
        report_dir.mkdir(parents=True, exist_ok=True)
        metrics = {"checkpoint": str(checkpoint.absolute()), "complete": True, "adapter": "moshi",
                   "verdicts": {"gate_stats": [{"name": "gate_stats", "ok": ok, "measured": 0.3 if ok else 0.01, "threshold": 0.5,
                                                "explanation": "", "layer": "l0", "details": {"alpha_init": 0.1}}]},
                   "layers": [{"name": "l0", "gate_mean_tanh": 0.3 if ok else 0.01, "gate_alpha_init": 0.1}]}
        (report_dir / "metrics.json").write_text(json.dumps(metrics))
        return 0 if ok else 1
    return gate


def test_trend_run_gates_the_missing_checkpoints_and_watch_refreshes_the_trend(tmp_path, monkeypatch, capsys):
    from ttt_checks.runs import watch
    from ttt_checks.cli import main

    run = _fake_run(tmp_path, [100, 200, 300])
    monkeypatch.setattr(watch, "subprocess_gate", lambda args: _fake_gate(bad_from=300))
    out = tmp_path / "out"
    assert main(["trend", str(run), "--out", str(out), "--reports", str(tmp_path / "none")]) == 5  # nothing gated yet
    assert main(["trend", str(run), "--out", str(out), "--reports", str(tmp_path / "none"), "--run"]) == 1
    data = json.loads((out / "trend.json").read_text())
    assert data["summary"]["last_healthy"] == "checkpoint_000200" and data["summary"]["first_red"]["gate_stats"]["red_from"] == 300
    assert (out / "watch-state.json").is_file()  # gated the way watch does: a restarted watcher skips them
    # watch: a new checkpoint is gated and the trend in its --out folder is refreshed
    _fake_run(tmp_path, [400])
    assert main(["watch", str(run), "--once", "--settle", "0", "--out", str(out)]) == 1
    data = json.loads((out / "trend.json").read_text())
    assert [p["step"] for p in data["points"]] == [100, 200, 300, 400]
    assert "watch: trend: keep checkpoint_000200" in capsys.readouterr().out
