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
turned red and names the last healthy checkpoint. Output: trend.html (plots embedded), the PNGs,
trend.json. Exit code: 0 when the newest gated checkpoint is healthy, 1 when not, 4 usage error,
5 when no checkpoint of the run has a report.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ttt_checks.checks.thresholds import THRESHOLDS
from ttt_checks.diagnosis import diagnosis_dict
from ttt_checks.paths import REPORTS
from ttt_checks.report.files import write_json_atomic, write_text_atomic
from ttt_checks.report.plots import _pyplot, _save
from ttt_checks.runs.discovery import STATE_FILE, checkpoint_name, find_checkpoints
from ttt_checks.ttt.gate import mean_effective_gate
from ttt_checks.verdict import finite_or_none

TREND_JSON = "trend.json"


TREND_HTML = "trend.html"


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


def step_of(name: str, index: int) -> int:
    """``checkpoint_005000`` -> 5000; a name without a number keeps its position in the run."""
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else index


def point_from_metrics(metrics: Mapping[str, Any], step: int, name: str, report_dir: Path) -> Point:
    """The trend's numbers of one checkpoint, read defensively (a missing key is a gap in a curve)."""
    verdicts = metrics.get("verdicts") or {}
    failing = sorted(c for c, vs in verdicts.items() if isinstance(vs, list) and any(not v.get("ok", False) for v in vs))
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
        f5[lname] = {"l0": l0, "lprev": lprev, "lafter": lafter,
                     "gap_context": l0 - lprev if l0 is not None and lprev is not None else None,
                     "gap_step": lprev - lafter if lprev is not None and lafter is not None else None}
    outer = metrics.get("outer_loss") or {}
    a, b = finite_or_none(outer.get("learned")), finite_or_none(outer.get("gate0"))
    rows = {str(r.get("label")): r for r in metrics.get("sweep") or [] if isinstance(r, Mapping)}
    diagnosis = metrics.get("diagnosis") or diagnosis_dict(metrics)
    findings = diagnosis.get("findings") or []
    return Point(step=step, name=name, checkpoint=str(metrics.get("checkpoint")), report_dir=str(report_dir),
                 healthy=not failing and bool(verdicts) and metrics.get("complete", True) is not False,
                 complete=metrics.get("complete", True) is not False, failing_checks=failing,
                 gate_tanh=gate, gate_init_tanh=init, figure5=f5,
                 outer_change=(a - b) / abs(b) if a is not None and b else None,
                 words_gate0=finite_or_none((rows.get("0") or {}).get("words")), words_learned=finite_or_none((rows.get("learned") or {}).get("words")),
                 diagnosis=str(diagnosis.get("summary", "")), top_rule=findings[0]["rule"] if findings else None)


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


def _lost_fraction(points: Sequence[Point]) -> float:
    """``gate_min_fraction_of_init`` of the newest report (the threshold the gates were judged by)."""
    for p in reversed(points):
        try:
            value = json.loads((Path(p.report_dir) / "metrics.json").read_text()).get("thresholds", {}).get("gate_min_fraction_of_init")
        except (OSError, ValueError):
            continue
        if finite_or_none(value) is not None:
            return float(value)
    default = THRESHOLDS.get("gate_min_fraction_of_init")
    return default.default if default is not None else 0.5


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


def summarise(points: Sequence[Point], missing: Sequence[str], lost_fraction: float = 0.5) -> dict[str, Any]:
    """The verdict of the run: last healthy checkpoint and what broke when, in one sentence too."""
    if not points:
        return {"newest_healthy": False, "last_healthy": None, "sentence": "no checkpoint of the run has been gated yet",
                "first_red": {}, "gates_began_falling": {}}
    reds = first_red(points)
    falling = gates_began_falling(points, lost_fraction)
    newest = points[-1]
    first_bad = next((p for p in points if not p.healthy), None)
    # The checkpoint to keep: the newest healthy one (before the current unhealthy streak, if any).
    keep = next((p for p in reversed(points) if p.healthy), None)
    parts = []
    if keep is not None:
        parts.append(f"keep {keep.name}" + (" (the newest)" if keep is newest else ""))
    else:
        parts.append("no gated checkpoint is healthy")
    if falling:
        step = min(falling.values())
        parts.append(f"gates began falling at {step} ({', '.join(sorted(l for l, s in falling.items() if s == step))})")
    for check, info in sorted(reds.items(), key=lambda kv: (kv[1]["red_from"] if kv[1]["red_from"] is not None else 1 << 60, kv[0])):
        if info["red_now"]:
            parts.append(f"{check} failed from {info['red_from']}")
    if newest.top_rule and not newest.healthy:
        parts.append(f"newest: {newest.diagnosis}")
    if missing:
        parts.append(f"{len(missing)} checkpoint(s) not gated ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; --run gates them)")
    return {"newest_healthy": newest.healthy, "newest": newest.name, "last_healthy": keep.name if keep else None,
            "last_healthy_step": keep.step if keep else None, "first_unhealthy_step": first_bad.step if first_bad else None,
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
            ax.axvline(mark, color="#137333", linestyle=":", linewidth=1.2, label="last healthy")
        for p in points:
            if not p.healthy:
                ax.axvspan(p.step - half, p.step + half, color="#c5221f", alpha=0.08)
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
    bottom.bar(steps, [len(p.failing_checks) for p in points], color=["#137333" if p.healthy else "#c5221f" for p in points],
               width=1.6 * half)
    reds = sorted(summary.get("first_red", {}).items(), key=lambda kv: kv[1]["first_red"])
    for i, (check, info) in enumerate(reds):
        at = info["red_from"] if info["red_from"] is not None else info["first_red"]
        bottom.axvline(at, color="#c5221f", linestyle="--", linewidth=0.8)
        bottom.text(0.01, 0.95 - 0.09 * i, f"{check}: first red {info['first_red']}, red from {info['red_from']}",
                    transform=bottom.transAxes, fontsize=7, color="#c5221f", va="top")
    bottom.set_ylim(0, max([len(p.failing_checks) for p in points] + [1]) + 0.3 * (len(reds) + 1))
    decorate(bottom, "Failing checks per checkpoint (red: unhealthy)", "checks")
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
             "<h2>Checkpoints</h2><table><tr><th>step</th><th>checkpoint</th><th>healthy</th><th>failing checks</th>"
             "<th>gate mean tanh</th><th>outer loss learned vs gate 0</th><th>words gate 0 / learned</th><th>diagnosis</th></tr>"]
    for p in points:
        gates = ", ".join(f"{l}: {v:.3g}" for l, v in p.gate_tanh.items() if v is not None)
        outer = "" if p.outer_change is None else f"{p.outer_change:+.2%}"
        words = f"{_w(p.words_gate0)} / {_w(p.words_learned)}"
        link = Path(p.report_dir) / "index.html"
        parts.append(f"<tr><td>{p.step}</td><td><a href='{e(link.as_uri() if link.is_absolute() else str(link))}'>{e(p.name)}</a></td>"
                     f"<td class='{'ok' if p.healthy else 'bad'}'>{'yes' if p.healthy else 'NO'}</td>"
                     f"<td>{e(', '.join(p.failing_checks))}</td><td>{e(gates)}</td><td>{outer}</td><td>{words}</td>"
                     f"<td>{e(p.diagnosis)}</td></tr>")
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


def _w(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def write_trend(run_dir: Path, out: Path, roots: Sequence[Path]) -> dict[str, Any]:
    """Collect, summarise and write trend.json, trend.html and the PNGs into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points, missing = collect(run_dir, roots)
    summary = summarise(points, missing, _lost_fraction(points))
    pngs = _plots(points, summary, out) if points else []
    data = {"run_dir": str(Path(run_dir).resolve()), "summary": summary, "not_gated": list(missing),
            "points": [vars(p) for p in points], "plots": [str(p) for p in pngs]}
    write_json_atomic(out / TREND_JSON, data)
    write_text_atomic(out / TREND_HTML, _html(points, summary, pngs, Path(run_dir)))
    return data


def default_roots(run_dir: Path) -> list[Path]:
    """Where gates write by default: reports/ of this clone (watch-<run>, slurm, gate runs)."""
    return [REPORTS]
