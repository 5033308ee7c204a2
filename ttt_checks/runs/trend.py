"""``ttt-checks trend RUN_DIR``: a training run's checkpoints over the step, and which one to keep.

A single checkpoint's report says what is wrong; the run-level question is *since when* and
*which checkpoint to keep* ("use an earlier checkpoint, before gating collapsed"). The trend reads
the metrics.json of every checkpoint of a run that was already gated:

- by ``ttt-checks watch`` (its ``watch-state.json`` maps each checkpoint to its report folder;
  default ``reports/watch-<run name>``, or ``--out`` of watch);
- by ``slurm/array.sbatch`` (``$TTT_REPORT_ROOT/<job>_<task>/metrics.json``, default
  ``reports/slurm``) or by hand (``ttt-checks gate CKPT --out DIR``): any metrics.json under the
  search roots (``--reports``, default ``reports/``) whose ``checkpoint`` is one of the run's.

``--run`` gates the checkpoints that have no report yet, exactly as ``watch --once`` does (same
folder, same state file). Per step it shows the mean tanh(alpha) per layer against its initial
value, the Figure-5 means and gaps per layer, the outer-loss change learned vs gate 0, words at
gate 0 and at the learned gate, the number of failing checks; it marks the first step each check
turned red and names the checkpoint to keep. Output: trend.html (plots embedded), the PNGs,
trend.json.

The run is told apart from the training. A check that fails in every gated checkpoint (a base
that never talks, a tensor the save drops: failing from the first checkpoint on) is a fault of
the setup, not of this training: it is set aside and named once ("constant over the run"), and
it still needs fixing separately. The checkpoint to keep is the newest one in which no failure
has *appeared*, i.e. no check fails that passed in an earlier checkpoint (so a run whose every
checkpoint fails the talk checks still names one). At the step a failure appeared the trend
compares that checkpoint with the one before it: which gate fell, which TTT tensors' norms grew
and by how much (metrics.json ``ttt_tensor_norms``), whether the inner step size ``base_lr``
changed, how the inner losses and the outer loss moved; from that it names the cause of the run
(the gates fell; the TTT weights were changed by the outer update under an unchanged base_lr;
base_lr itself changed) and a fix whose direction agrees with its numbers. That run-level cause
supersedes the fix a single checkpoint's diagnosis proposes (it cannot see the history).

Exit code: 0 when the newest gated checkpoint is healthy, 1 when not (constant failures included:
the newest checkpoint still fails them, and a model that fails a check is not healthy whatever
caused it; ``summary.training_broke`` in trend.json says whether a failure appeared during the
run), 4 usage error, 5 when no checkpoint of the run has a report.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ttt_checks.checks.thresholds import THRESHOLDS
from ttt_checks.diagnosis import CONFIG_KEYS, GENERIC_KEYS, diagnosis_dict
from ttt_checks.metrics.tensor_norms import norm_ratios
from ttt_checks.paths import REPORTS
from ttt_checks.report.files import write_json_atomic, write_text_atomic
from ttt_checks.report.plots import _pyplot, _save
from ttt_checks.runs.discovery import STATE_FILE, checkpoint_name, find_checkpoints
from ttt_checks.ttt.gate import mean_effective_gate
from ttt_checks.verdict import finite_or_none

TREND_JSON = "trend.json"


TREND_HTML = "trend.html"

# The TTT weights (all together) whose norm grew by this factor between two saves were moved by more
# than the training steps of a working recipe move them (measured on the reference trajectories of
# tests/test_trend_causes.py: saves 10 steps apart change it by a factor within 1 +- 6e-5; the outer lr
# x10000 multiplied it by 33-37 in one interval). Tensors that grew this much are named.
NORM_GROWTH = 2.0
# The outer loss at the learned gate "moved" when it changed by more than this fraction between two saves.
OUTER_MOVED_REL = 0.01
# The inner losses "exploded" when their largest smoothed value exceeds loss_ceiling, or "rose" when it
# grew by this factor between two saves.
INNER_ROSE = 1.5


@dataclass
class Point:
    """One gated checkpoint of the run: its step, its report, and the numbers the trend plots."""

    step: int
    name: str
    checkpoint: str
    report_dir: str
    healthy: bool
    complete: bool
    failing_checks: list[str]
    gate_tanh: dict[str, float | None] = field(default_factory=dict)
    gate_init_tanh: dict[str, float | None] = field(default_factory=dict)
    figure5: dict[str, dict[str, float | None]] = field(default_factory=dict)
    outer_change: float | None = None  # (learned - gate 0) / gate 0
    words_gate0: float | None = None
    words_learned: float | None = None
    diagnosis: str = ""
    top_rule: str | None = None
    adapter: str | None = None
    base_lr: dict[str, float | None] = field(default_factory=dict)  # per layer, the inner step size
    outer_learned: float | None = None  # mean outer loss at the learned gate
    ttt_norms: dict[str, float | None] = field(default_factory=dict)  # metrics.json ttt_tensor_norms
    appeared_failing: list[str] = field(default_factory=list)  # failing checks that passed in an earlier checkpoint
    # Checks judged and passed; None: unknown, every check not failing counts as passed. A check a
    # report did not judge (a -k selection) neither passed nor failed there.
    passing_checks: list[str] | None = None

    def passed(self, check: str) -> bool:
        return check in self.passing_checks if self.passing_checks is not None else check not in self.failing_checks


def step_of(name: str, index: int) -> int:
    """``checkpoint_005000`` -> 5000; a name without a number keeps its position in the run."""
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else index


def point_from_metrics(metrics: Mapping[str, Any], step: int, name: str, report_dir: Path) -> Point:
    """The trend's numbers of one checkpoint, read defensively (a missing key is a gap in a curve)."""
    verdicts = metrics.get("verdicts") or {}
    failing = sorted(c for c, vs in verdicts.items() if isinstance(vs, list) and any(not v.get("ok", False) for v in vs))
    passing = sorted(c for c, vs in verdicts.items() if isinstance(vs, list) and vs and c not in failing)
    gate, init = {}, {}
    for layer in metrics.get("layers") or []:
        lname = str(layer.get("name"))
        gate[lname] = finite_or_none(layer.get("gate_mean_tanh"))
        a0 = finite_or_none(layer.get("gate_alpha_init"))
        init[lname] = mean_effective_gate(a0) if a0 is not None else None
    for v in verdicts.get("gate_stats") or []:
        d = v.get("details") or {}
        lname = str(v.get("layer"))
        if v.get("layer") and gate.get(lname) is None:
            gate[lname] = finite_or_none(d.get("signed_mean_tanh", d.get("mean_tanh")))
        a0 = finite_or_none(d.get("alpha_init"))
        if v.get("layer") and init.get(lname) is None and a0 is not None:
            init[lname] = mean_effective_gate(a0)
    f5 = {}
    for lname, s in (metrics.get("figure5") or {}).items():
        l0, lprev, lafter = (finite_or_none(s.get(k)) for k in ("mean_l0", "mean_lprev", "mean_lafter"))
        f5[lname] = {"l0": l0, "lprev": lprev, "lafter": lafter, "max_smoothed": finite_or_none(s.get("max_smoothed_loss")),
                     "gap_context": l0 - lprev if l0 is not None and lprev is not None else None,
                     "gap_step": lprev - lafter if lprev is not None and lafter is not None else None}
    outer = metrics.get("outer_loss") or {}
    a, b = finite_or_none(outer.get("learned")), finite_or_none(outer.get("gate0"))
    rows = {str(r.get("label")): r for r in metrics.get("sweep") or [] if isinstance(r, Mapping)}
    # Diagnosed again with today's rules: a report written by an older version may carry advice
    # those rules no longer give (a "lower" that named a larger value).
    diagnosis = diagnosis_dict(metrics)
    findings = diagnosis.get("findings") or []
    base_lr = {str(l.get("name")): finite_or_none(l.get("base_lr")) for l in metrics.get("layers") or [] if isinstance(l, Mapping)}
    norms = {str(k): finite_or_none(v) for k, v in (metrics.get("ttt_tensor_norms") or {}).items()}
    return Point(step=step, name=name, checkpoint=str(metrics.get("checkpoint")), report_dir=str(report_dir),
                 healthy=not failing and bool(verdicts) and metrics.get("complete", True) is not False,
                 complete=metrics.get("complete", True) is not False, failing_checks=failing,
                 gate_tanh=gate, gate_init_tanh=init, figure5=f5,
                 outer_change=(a - b) / abs(b) if a is not None and b else None,
                 words_gate0=finite_or_none((rows.get("0") or {}).get("words")), words_learned=finite_or_none((rows.get("learned") or {}).get("words")),
                 diagnosis=str(diagnosis.get("summary", "")), top_rule=findings[0]["rule"] if findings else None,
                 adapter=str(metrics.get("adapter")) if metrics.get("adapter") else None, base_lr=base_lr,
                 outer_learned=a, ttt_norms=norms, passing_checks=passing)


def _same(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _ckpt_keys(ckpt: Path) -> set[str]:
    """Paths by which a report can name this checkpoint (the consolidated folder or its parent)."""
    keys = {str(ckpt.resolve()), str(ckpt.absolute())}
    if ckpt.name == "consolidated":
        keys |= {str(ckpt.parent.resolve()), str(ckpt.parent.absolute())}
    return keys


def find_reports(run_dir: Path, roots: Sequence[Path], max_depth: int = 4) -> dict[str, Path]:
    """{checkpoint absolute path: report dir} for the run's checkpoints that have a metrics.json.

    watch-state.json files under the roots are read first (they name the report of each
    checkpoint); then every metrics.json under the roots whose ``checkpoint`` is one of the run's
    (the newest wins when a checkpoint was gated twice).
    """
    checkpoints = find_checkpoints(run_dir)
    by_key = {k: c for c in checkpoints for k in _ckpt_keys(c)}
    found: dict[str, tuple[float, Path]] = {}

    def offer(ckpt_text: str | None, report_dir: Path) -> None:
        if not ckpt_text or not (report_dir / "metrics.json").is_file():
            return
        path = Path(ckpt_text)
        if not path.is_absolute():
            return
        ckpt = by_key.get(str(path)) or by_key.get(str(path.resolve()) if path.exists() else "")
        if ckpt is None:
            return
        mtime = (report_dir / "metrics.json").stat().st_mtime
        key = str(ckpt.absolute())
        if key not in found or mtime > found[key][0]:
            found[key] = (mtime, report_dir)

    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for state in _walk(root, STATE_FILE, max_depth):
            try:
                gated = json.loads(state.read_text()).get("gated", {})
            except (OSError, ValueError):
                continue
            for key, record in gated.items():
                offer(key, Path(record.get("report_dir", "")))
        for metrics_path in _walk(root, "metrics.json", max_depth):
            if metrics_path.parent.name.startswith("gw"):  # an xdist worker's part; the merged one is above
                continue
            try:
                ckpt_text = json.loads(metrics_path.read_text()).get("checkpoint")
            except (OSError, ValueError):
                continue
            if ckpt_text and not Path(ckpt_text).is_absolute():
                ckpt_text = str((Path.cwd() / ckpt_text))
            offer(ckpt_text, metrics_path.parent)
    return {k: v for k, (_, v) in found.items()}


def _walk(root: Path, filename: str, max_depth: int) -> Iterable[Path]:
    """Files named ``filename`` at most ``max_depth`` folders below ``root`` (report trees are shallow)."""
    frontier = [root]
    for _ in range(max_depth + 1):
        nxt = []
        for folder in frontier:
            candidate = folder / filename
            if candidate.is_file():
                yield candidate
            try:
                nxt += [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
            except OSError:
                continue
        frontier = nxt


def collect(run_dir: Path, roots: Sequence[Path]) -> tuple[list[Point], list[str]]:
    """(points oldest first, names of the run's checkpoints without a report)."""
    checkpoints = find_checkpoints(run_dir)
    reports = find_reports(run_dir, roots)
    points, missing = [], []
    for index, ckpt in enumerate(checkpoints):
        name = checkpoint_name(ckpt)
        report = reports.get(str(ckpt.absolute()))
        if report is None:
            missing.append(name)
            continue
        try:
            metrics = json.loads((report / "metrics.json").read_text())
        except (OSError, ValueError):
            missing.append(name)
            continue
        points.append(point_from_metrics(metrics, step_of(name, index), name, report))
    points.sort(key=lambda p: p.step)
    return points, missing


def _threshold(points: Sequence[Point], name: str, fallback: float) -> float:
    """Threshold ``name`` of the newest report that states it (what its checks were judged by),
    else the package default."""
    for p in reversed(points):
        try:
            value = json.loads((Path(p.report_dir) / "metrics.json").read_text()).get("thresholds", {}).get(name)
        except (OSError, ValueError):
            continue
        if finite_or_none(value) is not None:
            return float(value)
    default = THRESHOLDS.get(name)
    return default.default if default is not None else fallback


def _lost_fraction(points: Sequence[Point]) -> float:
    """``gate_min_fraction_of_init`` of the newest report (the threshold the gates were judged by)."""
    return _threshold(points, "gate_min_fraction_of_init", 0.5)


def first_red(points: Sequence[Point]) -> dict[str, dict[str, Any]]:
    """Per check: the first step it failed, and the step from which it stayed red up to the newest."""
    checks = sorted({c for p in points for c in p.failing_checks})
    out = {}
    for check in checks:
        red = [p.failing_checks.count(check) > 0 for p in points]
        first = next(p.step for p, r in zip(points, red) if r)
        streak_start = None
        for p, r in zip(reversed(points), reversed(red)):
            if not r:
                break
            streak_start = p.step
        out[check] = {"first_red": first, "red_from": streak_start, "red_now": red[-1]}
    return out


def gates_began_falling(points: Sequence[Point], lost_fraction: float = 0.5) -> dict[str, int]:
    """Per layer: the first step after the gate's peak (largest mean |tanh(alpha)|) when every later
    checkpoint stays below the peak and the newest has fallen below ``lost_fraction`` of it: the
    collapse ratio of the gate rule (``gate_min_fraction_of_init``), applied to the peak the run
    reached instead of the init, so a gate that grew and then fell back is seen falling."""
    layers = sorted({l for p in points for l in p.gate_tanh})
    out = {}
    for layer in layers:
        series = [(p.step, abs(p.gate_tanh[layer])) for p in points if p.gate_tanh.get(layer) is not None]
        if len(series) < 2:
            continue
        peak_index = max(range(len(series)), key=lambda i: series[i][1])
        peak = series[peak_index][1]
        later = series[peak_index + 1:]
        if later and all(v < peak for _, v in later) and later[-1][1] < lost_fraction * peak:
            out[layer] = later[0][0]
    return out


def split_failures(points: Sequence[Point]) -> dict[str, Any]:
    """Which failures belong to the setup and which appeared during the training.

    ``constant``: checks failing in the first gated checkpoint and passing in none (with two or
    more checkpoints; one checkpoint cannot tell the setup from the training). ``at_start``:
    checks failing in the first checkpoint that pass in a later one ({check: first step it
    passed}). ``appeared``: {check: the first step it failed after having passed in an earlier
    checkpoint}. Sets each point's ``appeared_failing``: its failing checks that passed before it.
    """
    at_start: dict[str, int] = {}
    appeared: dict[str, int] = {}
    if not points:
        return {"constant": [], "at_start": at_start, "appeared": appeared}
    checks = sorted({c for p in points for c in p.failing_checks})
    first = points[0]
    constant = [c for c in checks if len(points) >= 2 and c in first.failing_checks and not any(p.passed(c) for p in points)]
    for check in checks:
        if check in first.failing_checks:
            recovered = next((p.step for p in points if p.passed(check)), None)
            if recovered is not None:
                at_start[check] = recovered
    for index, p in enumerate(points):
        p.appeared_failing = [c for c in p.failing_checks if any(q.passed(c) for q in points[:index])]
        for check in p.appeared_failing:
            appeared.setdefault(check, p.step)
    return {"constant": constant, "at_start": at_start, "appeared": appeared}


def _is_gate(name: str) -> bool:
    """A gate's raw alpha (reference ``layers.3.ttt.alpha``, Moshi ``...gating.gating_alpha``): the
    trend judges gates by their tanh, so their norms stay out of the TTT weights' norm."""
    return name.rsplit(".", 1)[-1].endswith("alpha")


def explain_change(prev: Point, at: Point, lost_fraction: float = 0.5, loss_ceiling: float = 10.0,
                   keys: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What changed between two consecutive checkpoints, where a failure appeared at ``at``.

    Reads only numbers both reports carry: the gate per layer, the per-tensor norms of the TTT
    weights (``ttt_tensor_norms``), the inner step size ``base_lr``, the Figure-5 losses and the
    outer loss. Returns the numbers, a ``kind`` (first match: ``base_lr_changed``, ``outer_update``
    (the TTT weights' norm grew ``NORM_GROWTH``-fold or more), ``inner_losses_lr_unchanged``,
    ``gate_fell``; None when none of them explains it), a ``cause`` sentence and a ``fix`` whose
    direction agrees with its numbers (a fix that lowers names a smaller value).
    """
    keys = keys or GENERIC_KEYS
    span = f"between {prev.step} and {at.step}"
    out: dict[str, Any] = {"from_step": prev.step, "step": at.step, "kind": None, "cause": "", "fix": ""}

    gates = {}
    for layer in sorted(set(prev.gate_tanh) & set(at.gate_tanh)):
        a, b = prev.gate_tanh[layer], at.gate_tanh[layer]
        if a is not None and b is not None:
            gates[layer] = {"before": a, "after": b, "init": at.gate_init_tanh.get(layer),
                            "fell": abs(b) < lost_fraction * abs(a)}
    fell = [l for l, g in gates.items() if g["fell"]]
    out["gates"] = gates

    ratios = {n: r for n, r in norm_ratios(prev.ttt_norms, at.ttt_norms).items() if not _is_gate(n)}
    # The norm of all TTT weights together decides: a bias near 0 may double in a healthy step, the
    # whole set does not. The tensors named are those that grew most in absolute terms.
    total_before = math.sqrt(sum(prev.ttt_norms[n] ** 2 for n in ratios))
    total_after = math.sqrt(sum(at.ttt_norms[n] ** 2 for n in ratios))
    total_ratio = total_after / total_before if total_before > 0 else None
    grown = dict(sorted(((n, r) for n, r in ratios.items() if r >= NORM_GROWTH),
                        key=lambda kv: -(at.ttt_norms[kv[0]] - prev.ttt_norms[kv[0]])))
    out["norms"] = {"compared": len(ratios), "total_before": total_before if ratios else None,
                    "total_after": total_after if ratios else None, "total_ratio": total_ratio,
                    "max_ratio": max(ratios.values()) if ratios else None, "grown": grown,
                    "before": {n: prev.ttt_norms.get(n) for n in grown}, "after": {n: at.ttt_norms.get(n) for n in grown}}

    lrs_before = {l: v for l, v in prev.base_lr.items() if v is not None}
    lrs_after = {l: v for l, v in at.base_lr.items() if v is not None}
    changed_lr = {l: (lrs_before[l], lrs_after[l]) for l in sorted(set(lrs_before) & set(lrs_after)) if lrs_before[l] != lrs_after[l]}
    out["base_lr"] = {"before": lrs_before, "after": lrs_after, "changed": {l: list(v) for l, v in changed_lr.items()}}

    inner = {}
    for layer in sorted(set(prev.figure5) & set(at.figure5)):
        a, b = prev.figure5[layer].get("max_smoothed"), at.figure5[layer].get("max_smoothed")
        l0a, l0b = prev.figure5[layer].get("l0"), at.figure5[layer].get("l0")
        if a is None or b is None:
            continue
        state = "exploded" if b > loss_ceiling >= a else "rose" if a > 0 and b >= INNER_ROSE * a else "steady"
        inner[layer] = {"max_smoothed_before": a, "max_smoothed_after": b, "l0_before": l0a, "l0_after": l0b, "state": state}
    out["inner_losses"] = inner
    moved_inner = {l: v for l, v in inner.items() if v["state"] != "steady"}

    outer = None
    if prev.outer_learned is not None and at.outer_learned is not None and prev.outer_learned:
        rel = (at.outer_learned - prev.outer_learned) / abs(prev.outer_learned)
        outer = {"before": prev.outer_learned, "after": at.outer_learned, "rel": rel, "moved": abs(rel) > OUTER_MOVED_REL}
    out["outer_loss"] = outer
    outer_text = "" if outer is None else (
        f"the outer loss at the learned gate {'moved' if outer['moved'] else 'stayed flat'} "
        f"({outer['before']:.4g} -> {outer['after']:.4g}, {outer['rel']:+.1%})")

    def inner_text() -> str:
        parts = []
        for layer, v in moved_inner.items():
            parts.append(f"{layer}: largest smoothed inner loss {v['max_smoothed_before']:.3g} -> {v['max_smoothed_after']:.3g}"
                         + (f", mean l0 {v['l0_before']:.3g} -> {v['l0_after']:.3g}" if v["l0_before"] is not None and v["l0_after"] is not None else ""))
        return "; ".join(parts)

    def grown_text() -> str:
        top = list(grown.items())[:3]
        return ", ".join(f"{n} {prev.ttt_norms[n]:.3g} -> {at.ttt_norms[n]:.3g} (x{r:.3g})" for n, r in top) + (
            f" and {len(grown) - 3} more" if len(grown) > 3 else "")

    if changed_lr:
        layer, (a, b) = next(iter(changed_lr.items()))
        verb = "lower" if b > a else "raise"
        out.update(kind="base_lr_changed",
                   cause=f"the inner step size changed at step {at.step}: {keys['base_lr']} {a:g} -> {b:g} ({layer})"
                         + (f"; the inner losses {next(iter(moved_inner.values()))['state']} ({inner_text()})" if moved_inner else ""),
                   fix=f"keep {prev.name}; {verb} {keys['base_lr']} from {b:g} back to {a:g}, the value before step {at.step}")
    elif total_ratio is not None and total_ratio >= NORM_GROWTH:
        what = "exploded" if any(v["state"] == "exploded" for v in moved_inner.values()) else "rose"
        lr_now = ", ".join(sorted({f"{v:g}" for v in lrs_after.values()})) or "unrecorded"
        head = (f"the inner losses {what} from step {at.step} ({inner_text()}) while the inner step size ({keys['base_lr']} "
                f"{lr_now}) did not change: " if moved_inner else f"with the inner step size ({keys['base_lr']} {lr_now}) unchanged, ")
        out.update(kind="outer_update",
                   cause=head + f"the TTT weights' norm grew by {total_ratio:.3g}x {span} ({total_before:.4g} -> "
                                f"{total_after:.4g}, {len(ratios)} tensors together; most: {grown_text()}), i.e. the outer "
                                f"update (outer lr) changed them" + (f"; {outer_text}" if outer_text else "")
                                + (f"; the gates fell too ({', '.join(fell)})" if fell else ""),
                   fix=f"keep {prev.name}; lower the outer learning rate of the TTT parameters ({keys['outer_lr']}) "
                       f"back to what it was before step {at.step}; leave {keys['base_lr']} as it is (it did not change)")
    elif moved_inner and not changed_lr and lrs_after:
        what = "exploded" if any(v["state"] == "exploded" for v in moved_inner.values()) else "rose"
        lr_now = ", ".join(sorted({f"{v:g}" for v in lrs_after.values()}))
        unmeasured = "these reports carry no per-tensor norms (ttt_tensor_norms) to say which TTT tensors moved" if not ratios else (
            f"the TTT weights' norm changed by x{total_ratio:.3f} only, so the outer update did not blow them up")
        out.update(kind="inner_losses_lr_unchanged",
                   cause=f"the inner losses {what} from step {at.step} ({inner_text()}) while the inner step size "
                         f"({keys['base_lr']} {lr_now}) did not change, so the inner step size is not what changed; {unmeasured}"
                         + (f"; {outer_text}" if outer_text else ""),
                   fix=f"keep {prev.name}; find what changed in the training at step {at.step} (the outer learning rate "
                       f"{keys['outer_lr']}, the data); do not change {keys['base_lr']} for it")
    elif fell:
        parts = [f"{l}: mean tanh(alpha) {gates[l]['before']:.3g} -> {gates[l]['after']:.3g}"
                 + (f" (init {gates[l]['init']:.3g})" if gates[l]["init"] is not None else "") for l in fell]
        steady = (f"; the TTT weights' norm changed by x{total_ratio:.3f} only" if total_ratio is not None else "")
        out.update(kind="gate_fell",
                   cause=f"the gates fell from step {at.step} ({'; '.join(parts)}){steady}"
                         + (f"; {outer_text}" if outer_text else ""),
                   fix=f"keep {prev.name}; find what pushes the gates down from step {at.step} (a penalty or weight "
                       f"decay on alpha, a larger alpha learning rate) and remove it; the TTT weights themselves did not jump")
    return out


def summarise(points: Sequence[Point], missing: Sequence[str], lost_fraction: float = 0.5,
              loss_ceiling: float = 10.0) -> dict[str, Any]:
    """The verdict of the run: the checkpoint to keep and why, what broke when and from what cause,
    and the failures constant over the run; in one sentence too."""
    if not points:
        return {"newest_healthy": False, "last_healthy": None, "sentence": "no checkpoint of the run has been gated yet",
                "first_red": {}, "gates_began_falling": {}, "constant_failures": [], "appeared": {}, "keep": None}
    reds = first_red(points)
    falling = gates_began_falling(points, lost_fraction)
    split = split_failures(points)
    constant, appeared = split["constant"], split["appeared"]
    newest = points[-1]
    first_bad = next((p for p in points if not p.healthy), None)
    if len(points) >= 2:
        # The newest checkpoint in which no failure has appeared: constant failures and those
        # present from the start do not count against it.
        keep = next((p for p in reversed(points) if not p.appeared_failing and p.complete), None)
    else:
        keep = newest if newest.healthy else None
    appeared_at = min(appeared.values()) if appeared else None
    # Where the failures that last broke in: the checkpoint after the one kept (a failure that
    # appeared earlier and passed again is named, not explained).
    after_keep = next((p for p in points if keep is not None and p.step > keep.step), None)
    broke_at = after_keep.step if after_keep is not None else None
    explain_at = broke_at if broke_at is not None else appeared_at
    cause: dict[str, Any] | None = None
    if explain_at is not None:
        index = next(i for i, p in enumerate(points) if p.step == explain_at)
        keys = CONFIG_KEYS.get(str(newest.adapter), GENERIC_KEYS)
        cause = explain_change(points[index - 1], points[index], lost_fraction, loss_ceiling, keys)
    if keep is None:
        why = "no gated checkpoint is healthy"
    elif appeared_at is None:
        why = "no failure appeared during the run" if (constant or split["at_start"]) else "every gated checkpoint is healthy"
    elif broke_at is not None:
        why = f"the last checkpoint before a failure appeared at {broke_at}" + (
            f"; one that appeared at {appeared_at} passed again later" if appeared_at < broke_at else "")
    else:
        why = f"failures that appeared at {appeared_at} pass again in it"
    newest_note = "the newest; " if keep is newest and appeared_at is None else "the newest, " if keep is newest else ""
    parts = [f"keep {keep.name} ({newest_note}{why})" if keep is not None else why]
    if falling:
        step = min(falling.values())
        parts.append(f"gates began falling at {step} ({', '.join(sorted(l for l, s in falling.items() if s == step))})")
    for check, info in sorted(reds.items(), key=lambda kv: (kv[1]["red_from"] if kv[1]["red_from"] is not None else 1 << 60, kv[0])):
        if info["red_now"] and check not in constant:
            parts.append(f"{check} failed from {info['red_from']}")
    if cause and cause["kind"]:
        parts += [f"cause: {cause['cause']}", f"fix: {cause['fix']}"]
    elif newest.top_rule and not newest.healthy:
        parts.append(f"newest: {newest.diagnosis}")
    if constant:
        parts.append(f"constant over the run: {', '.join(constant)} (failing in every gated checkpoint, so not caused by this "
                     f"training; they still need fixing separately)")
    if split["at_start"]:
        parts.append("failing at the start only: " + ", ".join(f"{c} (passes from {s})" for c, s in split["at_start"].items()))
    if missing:
        parts.append(f"{len(missing)} checkpoint(s) not gated ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; --run gates them)")
    return {"newest_healthy": newest.healthy, "newest": newest.name, "last_healthy": keep.name if keep else None,
            "last_healthy_step": keep.step if keep else None, "first_unhealthy_step": first_bad.step if first_bad else None,
            "keep": {"name": keep.name, "step": keep.step, "why": why} if keep else None,
            "training_broke": appeared_at is not None, "failure_appeared_at": appeared_at, "broke_at": broke_at,
            "appeared": appeared,
            "constant_failures": constant, "failing_at_start": split["at_start"], "cause": cause,
            "first_red": reds, "gates_began_falling": falling, "sentence": "; ".join(parts)}


def _plots(points: Sequence[Point], summary: Mapping[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    steps = [p.step for p in points]
    files = []
    mark = summary.get("last_healthy_step")
    gaps = [b - a for a, b in zip(steps, steps[1:]) if b > a]
    half = 0.4 * min(gaps) if gaps else 0.5  # an unhealthy checkpoint's band, narrower than the spacing

    def decorate(ax, title: str, ylabel: str) -> None:
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if mark is not None:
            ax.axvline(mark, color="#137333", linestyle=":", linewidth=1.2, label="keep")
        for p in points:  # red: a failure appeared; grey: only failures present from the start
            if not p.healthy:
                ax.axvspan(p.step - half, p.step + half, color="#c5221f" if p.appeared_failing else "#777777", alpha=0.08)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")

    layers = sorted({l for p in points for l in p.gate_tanh})
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, layer in enumerate(layers):
        color = f"C{i % 10}"
        ax.plot(steps, [p.gate_tanh.get(layer) for p in points], marker="o", color=color, label=f"{layer}")
        inits = [p.gate_init_tanh.get(layer) for p in points if p.gate_init_tanh.get(layer) is not None]
        if inits:
            ax.axhline(inits[-1], color=color, linestyle="--", linewidth=1, label=f"{layer} init")
    decorate(ax, "Gate: mean tanh(alpha) per layer (dashed: initial value)", "mean tanh(alpha)")
    files.append(_save(fig, out / "trend_gates.png"))
    plt.close(fig)

    f5_layers = sorted({l for p in points for l in p.figure5})
    if f5_layers:
        fig, axes = plt.subplots(len(f5_layers), 2, figsize=(11, 3.2 * len(f5_layers)), squeeze=False)
        for row, layer in enumerate(f5_layers):
            left, right = axes[row]
            for key in ("l0", "lprev", "lafter"):
                left.plot(steps, [p.figure5.get(layer, {}).get(key) for p in points], marker="o", label=key)
            decorate(left, f"Figure-5 means, {layer}", "inner loss")
            for key, label in (("gap_context", "l0 - lprev (context)"), ("gap_step", "lprev - lafter (one step)")):
                right.plot(steps, [p.figure5.get(layer, {}).get(key) for p in points], marker="o", label=label)
            right.axhline(0, color="black", linewidth=0.8)
            decorate(right, f"Figure-5 gaps, {layer} (must stay > 0)", "gap")
        fig.tight_layout()
        files.append(_save(fig, out / "trend_figure5.png"))
        plt.close(fig)

    named = sorted({n for p in points for n, v in p.ttt_norms.items() if v is not None and not _is_gate(n)})
    if named:
        fig, ax = plt.subplots(figsize=(8, 4))
        first = next(p for p in points if p.ttt_norms)
        for name in named:
            ref = first.ttt_norms.get(name)
            if ref:
                ax.plot(steps, [None if p.ttt_norms.get(name) is None else p.ttt_norms[name] / ref for p in points],
                        color="#9aa0a6", linewidth=0.8, alpha=0.7)
        totals = [math.sqrt(sum(v ** 2 for n, v in p.ttt_norms.items() if v is not None and not _is_gate(n))) if p.ttt_norms else None
                  for p in points]
        ref_total = next((t for t in totals if t), None)
        ax.plot(steps, [None if t is None or not ref_total else t / ref_total for t in totals], marker="o", color="black",
                label="all TTT weights together")
        ax.set_yscale("log")
        decorate(ax, "TTT weights' norms relative to the first checkpoint (grey: each tensor)", "norm / norm at first")
        files.append(_save(fig, out / "trend_norms.png"))
        plt.close(fig)

    fig, (top, mid, bottom) = plt.subplots(3, 1, figsize=(8, 8.5), sharex=True)
    top.plot(steps, [None if p.outer_change is None else 100 * p.outer_change for p in points], marker="o", color="#d62728",
             label="learned vs gate 0")
    top.axhline(0, color="black", linewidth=0.8)
    decorate(top, "Outer loss change at the learned gate vs gate 0 (< 0: TTT helps)", "%")
    mid.plot(steps, [p.words_gate0 for p in points], marker="o", color="#7f7f7f", label="gate 0")
    mid.plot(steps, [p.words_learned for p in points], marker="o", color="#1f77b4", label="learned gate")
    if all(p.words_gate0 is None and p.words_learned is None for p in points):
        mid.text(0.5, 0.5, "no gating sweep in these reports (gated without the talk checks)", transform=mid.transAxes,
                 ha="center", va="center", color="#666")
    decorate(mid, "Words heard in the gating sweep", "words")
    bottom.bar(steps, [len(p.failing_checks) for p in points],
               color=["#137333" if p.healthy else "#c5221f" if p.appeared_failing else "#777777" for p in points], width=1.6 * half)
    reds = sorted(summary.get("first_red", {}).items(), key=lambda kv: kv[1]["first_red"])
    for i, (check, info) in enumerate(reds):
        at = info["red_from"] if info["red_from"] is not None else info["first_red"]
        bottom.axvline(at, color="#c5221f", linestyle="--", linewidth=0.8)
        bottom.text(0.01, 0.95 - 0.09 * i, f"{check}: first red {info['first_red']}, red from {info['red_from']}",
                    transform=bottom.transAxes, fontsize=7, color="#c5221f", va="top")
    bottom.set_ylim(0, max([len(p.failing_checks) for p in points] + [1]) + 0.3 * (len(reds) + 1))
    decorate(bottom, "Failing checks per checkpoint (red: a failure appeared; grey: only constant ones)", "checks")
    fig.tight_layout()
    files.append(_save(fig, out / "trend_outer_words_checks.png"))
    plt.close(fig)
    return files


def _html(points: Sequence[Point], summary: Mapping[str, Any], pngs: Sequence[Path], run_dir: Path) -> str:
    e = html.escape
    ok = summary.get("newest_healthy")
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ttt-checks trend</title><style>"
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1150px;color:#222}"
             "table{border-collapse:collapse;width:100%} td,th{border:1px solid #ddd;padding:4px 8px;font-size:13px;vertical-align:top}"
             ".ok{color:#137333;font-weight:600}.bad{color:#c5221f;font-weight:600} img{max-width:100%}</style></head><body>",
             f"<h1>Training run trend</h1><p><code>{e(str(run_dir))}</code></p>",
             f"<p class='{'ok' if ok else 'bad'}'>{e(str(summary.get('sentence', '')))}</p>",
             _verdict_html(summary),
             "<h2>Checkpoints</h2><table><tr><th>step</th><th>checkpoint</th><th>healthy</th><th>failing checks</th>"
             "<th>appeared during the run</th><th>gate mean tanh</th><th>TTT weights' norm (x previous)</th>"
             "<th>largest smoothed inner loss</th><th>base_lr</th>"
             "<th>outer loss learned vs gate 0</th><th>words gate 0 / learned</th><th>diagnosis of this checkpoint alone</th></tr>"]
    previous: Point | None = None
    for p in points:
        gates = ", ".join(f"{l}: {v:.3g}" for l, v in p.gate_tanh.items() if v is not None)
        outer = "" if p.outer_change is None else f"{p.outer_change:+.2%}"
        words = f"{_w(p.words_gate0)} / {_w(p.words_learned)}"
        link = Path(p.report_dir) / "index.html"
        norm = _total_norm(p)
        before = _total_norm(previous) if previous is not None else None
        norm_text = "-" if norm is None else f"{norm:.4g}" + (f" (x{norm / before:.3f})" if before else "")
        smoothed = ", ".join(f"{l}: {v['max_smoothed']:.3g}" for l, v in p.figure5.items() if v.get("max_smoothed") is not None)
        lrs = ", ".join(sorted({f"{v:g}" for v in p.base_lr.values() if v is not None}))
        parts.append(f"<tr><td>{p.step}</td><td><a href='{e(link.as_uri() if link.is_absolute() else str(link))}'>{e(p.name)}</a></td>"
                     f"<td class='{'ok' if p.healthy else 'bad'}'>{'yes' if p.healthy else 'NO'}</td>"
                     f"<td>{e(', '.join(p.failing_checks))}</td><td class='bad'>{e(', '.join(p.appeared_failing))}</td>"
                     f"<td>{e(gates)}</td><td>{e(norm_text)}</td><td>{e(smoothed)}</td><td>{e(lrs)}</td>"
                     f"<td>{outer}</td><td>{words}</td><td>{e(p.diagnosis)}</td></tr>")
        previous = p
    parts.append("</table><h2>First step each check turned red</h2><table><tr><th>check</th><th>first red</th>"
                 "<th>red from (up to the newest)</th></tr>")
    for check, info in summary.get("first_red", {}).items():
        parts.append(f"<tr><td>{e(check)}</td><td>{info['first_red']}</td><td>{'' if info['red_from'] is None else info['red_from']}</td></tr>")
    parts.append("</table><h2>Plots</h2>")
    for png in pngs:
        data = base64.b64encode(Path(png).read_bytes()).decode()
        parts.append(f"<figure><img alt='{e(png.name)}' src='data:image/png;base64,{data}'><figcaption>{e(png.name)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _total_norm(p: Point) -> float | None:
    """The norm of all the checkpoint's TTT weights together (the gate alphas left out)."""
    values = [v for n, v in p.ttt_norms.items() if v is not None and not _is_gate(n)]
    return math.sqrt(sum(v * v for v in values)) if values else None


def _verdict_html(summary: Mapping[str, Any]) -> str:
    """The run's verdict as a short list: what to keep and why, the cause, the fix, and the
    failures of the setup that the kept checkpoint still has."""
    e = html.escape
    keep = summary.get("keep") or {}
    rows = [("Checkpoint to keep", f"{keep.get('name')} (step {keep.get('step')})" if keep else "none"),
            ("Why", keep.get("why") or "")]
    cause = summary.get("cause") or {}
    if cause.get("kind"):
        rows += [(f"Cause (found at step {cause.get('step')}, compared with {cause.get('from_step')})", cause.get("cause", "")),
                 ("Fix", cause.get("fix", ""))]
    elif summary.get("failure_appeared_at") is not None:
        rows.append(("Cause", f"a failure appeared at {summary['failure_appeared_at']}; no change between the two checkpoints "
                              "(gate, TTT weights' norms, base_lr, inner losses) explains it: see each checkpoint's diagnosis"))
    if summary.get("constant_failures"):
        rows.append(("Constant over the run (still to fix, separately)",
                     ", ".join(summary["constant_failures"]) + ": failing in every gated checkpoint, the kept one included, so "
                     "not caused by this training; keeping an earlier checkpoint does not fix them"))
    if summary.get("failing_at_start"):
        rows.append(("Failing at the start only", ", ".join(f"{c} (passes from {s})" for c, s in summary["failing_at_start"].items())))
    body = "".join(f"<tr><th style='text-align:left;width:22%'>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    return f"<h2>Verdict of the run</h2><table>{body}</table>"


def _w(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def write_trend(run_dir: Path, out: Path, roots: Sequence[Path]) -> dict[str, Any]:
    """Collect, summarise and write trend.json, trend.html and the PNGs into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points, missing = collect(run_dir, roots)
    summary = summarise(points, missing, _lost_fraction(points), _threshold(points, "loss_ceiling", 10.0))
    pngs = _plots(points, summary, out) if points else []
    data = {"run_dir": str(Path(run_dir).resolve()), "summary": summary, "not_gated": list(missing),
            "points": [vars(p) for p in points], "plots": [str(p) for p in pngs]}
    write_json_atomic(out / TREND_JSON, data)
    write_text_atomic(out / TREND_HTML, _html(points, summary, pngs, Path(run_dir)))
    return data


def default_roots(run_dir: Path) -> list[Path]:
    """Where gates write by default: reports/ of this clone (watch-<run>, slurm, gate runs)."""
    return [REPORTS]
