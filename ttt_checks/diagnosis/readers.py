"""Reading one health run's metrics.json for the rules: defensive readers and config key names.

A measurement another part of the suite did not make (an older run, a ``-k`` selection) reads as
missing here, never as an error.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from ttt_checks.diagnosis.finding import Metrics
from ttt_checks.verdict import Status, finite_or_none, status_of

# Config keys per adapter family (metrics["adapter"]); a family not listed gets the generic names.
CONFIG_KEYS: dict[str, dict[str, str]] = {
    "moshi": {"base_weights": "--moshi-weight (the base Moshi weights the run was fine-tuned from)", "base_lr": "ttt.base_lr", "gate_init": "ttt.initial_gating_alpha", "persistent": "ttt.persistent_states",
              "causal": "the TTT layer's mini-batch mask (make it causal: a lower-triangular eta)",
              "mini_batch": "ttt.mini_batch_size", "outer_lr": "optim.lr"},
    "reference": {"base_weights": "base (config.json: the base checkpoint folder)", "base_lr": "decoder.ttt.base_lr", "gate_init": "decoder.alpha_init", "persistent": "decoder.ttt_reset_each_call",
                  "causal": "decoder.ttt.causal", "mini_batch": "decoder.ttt.mini_batch_size", "outer_lr": "recipe.lr"},
}
GENERIC_KEYS = {"base_weights": "the base model weights", "base_lr": "ttt.base_lr", "gate_init": "the gate's initial alpha", "persistent": "the TTT state carry flag",
                "causal": "the TTT mini-batch mask (causal)", "mini_batch": "ttt.mini_batch_size", "outer_lr": "the outer learning rate"}


# ---------------------------------------------------------------------------------------------
# Defensive readers
# ---------------------------------------------------------------------------------------------


def verdicts_of(metrics: Metrics, check: str) -> list[dict[str, Any]]:
    vs = (metrics.get("verdicts") or {}).get(check) or []
    return [v for v in vs if isinstance(v, Mapping)]


def failing(metrics: Metrics, check: str) -> list[dict[str, Any]]:
    return [v for v in verdicts_of(metrics, check) if not v.get("ok", False)]


def measured(metrics: Metrics, check: str) -> bool:
    """The check ran (has at least one verdict) in this run."""
    return bool(verdicts_of(metrics, check))


def _cannot_measure(v: Mapping[str, Any]) -> bool:
    return status_of(v) is Status.CANNOT_MEASURE


def _details(v: Mapping[str, Any]) -> Mapping[str, Any]:
    d = v.get("details")
    return d if isinstance(d, Mapping) else {}


def _keys(metrics: Metrics) -> dict[str, str]:
    return CONFIG_KEYS.get(str(metrics.get("adapter")), GENERIC_KEYS)


def _layer_info(metrics: Metrics) -> dict[str, Mapping[str, Any]]:
    return {str(l.get("name")): l for l in metrics.get("layers") or [] if isinstance(l, Mapping)}


def _figure5(metrics: Metrics) -> dict[str, Mapping[str, Any]]:
    f5 = metrics.get("figure5") or {}
    return {str(k): v for k, v in f5.items() if isinstance(v, Mapping)}


def _step_probe(metrics: Metrics) -> dict[str, Mapping[str, Any]]:
    """metrics["inner_step_size"][layer] (best_multiplier, base_lr, recommended_base_lr), or, when
    only the verdicts carry it, their details."""
    probe = metrics.get("inner_step_size")
    out: dict[str, Mapping[str, Any]] = {}
    if isinstance(probe, Mapping):
        out = {str(k): v for k, v in probe.items() if isinstance(v, Mapping)}
    for v in verdicts_of(metrics, "inner_step_size"):
        if v.get("layer") and str(v["layer"]) not in out and _details(v):
            out[str(v["layer"])] = _details(v)
    # Two regimes on one line (the verdict's first_basin_multiplier): the step's optimum is the first
    # minimum, not the grid's lowest loss further out in the saturated regime.
    for v in verdicts_of(metrics, "inner_step_size"):
        basin = finite_or_none(_details(v).get("first_basin_multiplier"))
        layer = str(v.get("layer"))
        if basin is not None and layer in out:
            p = dict(out[layer])
            base = finite_or_none(p.get("base_lr"))
            p.update(grid_best_multiplier=p.get("best_multiplier"), best_multiplier=basin,
                     recommended_base_lr=base * basin if base is not None else None, bracketed=None)
            out[layer] = p
    return out


def _th(metrics: Metrics, name: str, default: float) -> float:
    value = finite_or_none((metrics.get("thresholds") or {}).get(name))
    return default if value is None else value


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def _evidence(metrics: Metrics, checks: Iterable[str], layers: Sequence[str] = ()) -> list[str]:
    """Artifacts of the checks (metrics["artifacts"]); Figure-5 files only of the named layers."""
    artifacts = metrics.get("artifacts") or {}
    slugs = [_slug(l) for l in layers]
    out: list[str] = []
    for check in checks:
        for path in artifacts.get(check) or []:
            name = str(path).rsplit("/", 1)[-1]
            if slugs and name.startswith("figure5_") and not any(s in name for s in slugs):
                continue
            if path not in out:
                out.append(str(path))
    return out


def _sweep_rows(metrics: Metrics) -> list[Mapping[str, Any]]:
    return [r for r in metrics.get("sweep") or [] if isinstance(r, Mapping)]


def _recommended_lr(metrics: Metrics, layers: Sequence[str], direction: str) -> tuple[float | None, str, str]:
    """(value, why, bound) for ttt base_lr: the step-size probe's recommendation when it measured one
    that goes the way the caller's advice goes ("down": below the current base_lr, "up": above,
    "any"), else None (the caller says what to try and that it is not measured). Advice to lower
    base_lr never carries a larger value. When the best multiplier is the grid's edge the optimum
    is not bracketed: ``bound`` is "at most" or "at least" (else "") and ``why`` says how far the
    measurement reaches."""
    probe = _step_probe(metrics)
    values = []
    for layer in layers or list(probe):
        p = probe.get(layer) or {}
        rec, mult = finite_or_none(p.get("recommended_base_lr")), finite_or_none(p.get("best_multiplier"))
        if rec is None or mult is None or p.get("flat"):  # a flat line measures no optimum
            continue
        if (direction == "down" and not mult < 1.0) or (direction == "up" and not mult > 1.0):
            continue
        grid = [g for g in (finite_or_none(x) for x in p.get("multipliers") or []) if g is not None]
        bracketed = p.get("bracketed")
        if bracketed is None and grid:  # runs written before the probe said so
            bracketed = min(grid) < mult < max(grid)
        values.append((layer, rec, mult, bracketed is not False, grid))
    if not values:
        return None, "", ""
    layer, rec, mult, bracketed, grid = min(values, key=lambda x: x[1]) if direction == "down" else max(values, key=lambda x: x[1])
    why = f"the inner step-size probe measured the loss minimum along the step in {layer} (best multiplier {mult:g} of the current step)"
    if bracketed:
        return rec, why, ""
    smaller = mult <= min(grid, default=mult)
    bound = "at most" if smaller else "at least"
    why += (f"; not bracketed: {'smaller' if smaller else 'larger'} steps still help up to the grid's edge (x{mult:g}), "
            f"so the best base_lr is {bound} {rec:.3g}, beyond what was measured")
    return rec, why, bound


def _to_value(rec: float | None, bound: str) -> str:
    """' to 0.25' or ' to at most 0.25' for a fix text; '' without a value."""
    return "" if rec is None else f" to {bound + ' ' if bound else ''}{rec:.3g}"


def _base_lr(metrics: Metrics, layers: Sequence[str]) -> float | None:
    info = _layer_info(metrics)
    for layer in layers or list(info):
        value = finite_or_none((info.get(layer) or {}).get("base_lr"))
        if value is not None:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# Rule functions: metrics -> Finding | None
# ---------------------------------------------------------------------------------------------


def _layer_key(name: str) -> tuple[int, str]:
    numbers = re.findall(r"\d+", name)
    return (int(numbers[0]) if numbers else 1 << 30, name)


def _dead(m: Metrics) -> tuple[list[str], list[str], list[str], int | None, Mapping[str, Any] | None]:
    """(unchanged, unused, zeroed, compared, verdict) of a failing dead_parameters verdict."""
    bad = [v for v in failing(m, "dead_parameters") if not _cannot_measure(v)]
    if not bad:
        return [], [], [], None, None
    d = _details(bad[0])
    compared = d.get("compared")
    return ([str(x) for x in d.get("unchanged") or []], [str(x) for x in d.get("unused") or []],
            [str(x) for x in d.get("zeroed") or []],
            int(compared) if isinstance(compared, (int, float)) and not isinstance(compared, bool) else None, bad[0])


def _f5_layers(m: Metrics, predicate: Callable[[Mapping[str, Any]], bool]) -> list[str]:
    return sorted((name for name, s in _figure5(m).items() if predicate(s)), key=_layer_key)


def _talks(m: Metrics, row: Mapping[str, Any]) -> bool | None:
    words = finite_or_none(row.get("words"))
    if words is None:
        return None
    collapsed = bool((row.get("collapse") or {}).get("collapsed")) if isinstance(row.get("collapse"), Mapping) else False
    return words >= _th(m, "talk_min_base_words", 3.0) and not collapsed


def _sweep_scenario(m: Metrics) -> str | None:
    """'healthy', 'A', 'B', 'C' or None (no sweep, or a shape none of them describes)."""
    rows = _sweep_rows(m)
    by_label = {str(r.get("label")): r for r in rows}
    base, learned = by_label.get("0"), by_label.get("learned")
    if base is None:
        return None
    others = [r for r in rows if str(r.get("label")) not in ("0", "learned") and finite_or_none(r.get("gate_tanh")) is not None]
    top = max(others, key=lambda r: abs(finite_or_none(r["gate_tanh"]))) if others else None
    talks = {str(r.get("label")): _talks(m, r) for r in rows}
    if any(t is None for t in talks.values()):
        return None
    if not any(talks.values()):
        return "C"
    base_talks = talks["0"]
    learned_talks = talks.get("learned")
    gate_failed = any(not _details(v).get("untrained") for v in _gate_verdicts(m))  # fell, not never trained
    # B says the learned gate is too small to use what TTT learned: only where it is smaller than the top gate that talks.
    learned_below_top = (learned is not None and top is not None and finite_or_none(learned.get("gate_tanh")) is not None
                         and abs(finite_or_none(learned["gate_tanh"])) < abs(finite_or_none(top["gate_tanh"])))
    if base_talks and learned_talks is not None and not learned_talks:
        if top is not None and talks[str(top.get("label"))]:
            return "B" if learned_below_top else None
        return "A" if top is not None else None
    if base_talks and gate_failed and top is not None and talks[str(top.get("label"))] and (learned is None or learned_below_top):
        return "B"
    if base_talks and learned_talks:
        return "healthy"
    return None


def _gate_verdicts(m: Metrics) -> list[dict[str, Any]]:
    return [v for v in failing(m, "gate_stats") if not _cannot_measure(v)]
