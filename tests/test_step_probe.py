"""The inner step-size probe: its dual form against an explicit float64 brute force, its m = 1
point against Figure-5's lafter, the health rule on constructed line searches, and the rule on
the zoo checkpoints (too high and too low inner learning rates caught in the right direction).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ttt_checks import checks as health
from ttt_checks.ttt import Figure5Probe, TTTConfig, TTTLayer
from ttt_checks.ttt.step_probe import DEFAULT_MULTIPLIERS, StepSizeRecord

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64
GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # m = 0 too: the brute force must give the start loss there


def make_layer(config: TTTConfig, seed: int, dtype: torch.dtype = F64) -> TTTLayer:
    """A layer with weights large enough that the inner loss curves along the step (not linear)."""
    torch.manual_seed(seed)
    layer = TTTLayer(config).to(dtype)
    with torch.no_grad():
        for w in layer.weights:
            w.normal_(0.0, 0.3)
        for b in layer.biases:
            b.normal_(0.0, 0.1)
        layer.ttt_norm_weight.normal_(1.0, 0.2)
        layer.lr_bias.normal_(0.0, 1.0)
    return layer


def probe_pass(layer: TTTLayer, x: torch.Tensor, grid=GRID):
    probe = Figure5Probe(step_multipliers=grid)
    with probe.attach({"ttt": layer}), torch.no_grad():
        layer(x)
    return probe.step_record("ttt"), probe.record("ttt")


def brute_force_step_losses(layer: TTTLayer, x: torch.Tensor, grid) -> np.ndarray:
    """Mean over complete mini-batches' rows of loss(W'- m * sum_j eta[i, j] G_j; x_i), with every
    G_j from autograd and every W_i(m) materialised: a token loop sharing nothing with inner.py."""
    c = layer.config
    B, T, _ = x.shape
    b = c.mini_batch_size
    with torch.no_grad():
        rows = layer.project(x, torch.arange(T))
    gamma, beta = layer.ttt_norm_weight.detach().to(F64), layer.ttt_norm_bias.detach().to(F64)

    def predict(k, ws, bs, h):
        z = k
        for i, (w, v) in enumerate(zip(ws, bs)):
            z = z @ w + v
            if i < len(ws) - 1:
                z = torch.nn.functional.gelu(z, approximate="tanh")
        if c.inner_norm:
            z = torch.nn.functional.layer_norm(z, z.shape[-1:], eps=c.ln_eps) * gamma[h] + beta[h]
        return z

    sums, count = np.zeros(len(grid)), 0
    for bi in range(B):
        for h in range(c.num_heads):
            ws = [w[h].detach().to(F64) for w in layer.weights]
            bs = [v[h, 0].detach().to(F64) for v in layer.biases]
            for start in range(0, (T // b) * b, b):
                toks = range(start, start + b)
                grads = []
                for t in toks:
                    pw = [w.clone().requires_grad_(True) for w in ws]
                    pb = [v.clone().requires_grad_(True) for v in bs]
                    loss = 0.5 * (predict(rows["xk"][bi, h, t].to(F64), pw, pb, h) - rows["target"][bi, h, t].to(F64)).pow(2).sum()
                    grads.append(torch.autograd.grad(loss, pw + pb))
                for i, t in enumerate(toks):
                    step = [torch.zeros_like(p) for p in ws + bs]
                    for j, tj in enumerate(toks):
                        if c.causal and j > i:
                            continue
                        scale = 1.0 / (i + 1) if c.eta_weighting == "token_index" else 1.0 / b
                        e = scale * rows["sigma"][bi, h, tj].to(F64)
                        step = [s + e * g for s, g in zip(step, grads[j])]
                    for k, m in enumerate(grid):
                        moved = [p - m * s for p, s in zip(ws + bs, step)]
                        pred = predict(rows["xk"][bi, h, t].to(F64), moved[: len(ws)], moved[len(ws):], h)
                        sums[k] += float((pred - rows["target"][bi, h, t].to(F64)).pow(2).mean())
                    count += 1
                # The state carried to the next mini-batch: W' - sum_j (sigma_j / b) G_j.
                carried = [p.clone() for p in ws + bs]
                for j, tj in enumerate(toks):
                    e = rows["sigma"][bi, h, tj].to(F64) / b
                    carried = [p - e * g for p, g in zip(carried, grads[j])]
                ws, bs = carried[: len(ws)], carried[len(ws):]
    return sums / count


@st.composite
def step_configs(draw) -> TTTConfig:
    causal = draw(st.booleans())
    kind = draw(st.sampled_from(["linear", "mlp"]))
    return TTTConfig(
        width=draw(st.integers(3, 6)), num_heads=draw(st.integers(1, 2)), head_dim=draw(st.integers(2, 4)),
        inner=kind, mlp_layers=draw(st.integers(2, 3)) if kind == "mlp" else 2, mlp_expansion=2.0,
        inner_norm=draw(st.booleans()), target="plain", mini_batch_size=draw(st.sampled_from([1, 4, 16])),
        base_lr=draw(st.sampled_from([0.3, 1.0, 5.0])),
        eta_weighting=draw(st.sampled_from(["token_index", "uniform"])) if causal else "uniform",
        causal=causal, output_projection=False,
    )


@settings(max_examples=15, deadline=None)
@given(config=step_configs(), seed=st.integers(0, 10_000), batch=st.integers(1, 2), minibatches=st.integers(1, 3),
       tail=st.integers(0, 3))
def test_scaled_step_losses_equal_the_explicit_per_token_weights(config, seed, batch, minibatches, tail):
    """float64: the dual form of W' - m * step equals materialised weights at every m (the partial
    last mini-batch, ``tail`` rows, is left out of the probe: its step is not final)."""
    layer = make_layer(config, seed)
    b = config.mini_batch_size
    torch.manual_seed(seed + 1)
    x = torch.randn(batch, minibatches * b + (tail % b if b > 1 else 0), config.width, dtype=F64)
    record, _ = probe_pass(layer, x)
    expected = brute_force_step_losses(layer, x, GRID)
    np.testing.assert_allclose(record.losses, expected, rtol=1e-9, atol=1e-12)
    assert record.count == batch * config.num_heads * minibatches * b
    assert record.loss_start == pytest.approx(expected[0], rel=1e-9, abs=1e-12)  # m = 0 is the mini-batch start


@settings(max_examples=10, deadline=None)
@given(config=step_configs(), seed=st.integers(0, 10_000), dtype=st.sampled_from([torch.float32, F64]))
def test_step_multiplier_one_is_lafter(config, seed, dtype):
    """m = 1 is the step the layer took. The probe takes it from Figure-5's lafter; computed by
    the line search's own dual form it agrees, row by row, to rounding (the two batch their
    products differently: fp64 ~1e-15, fp32 ~1e-7 relative per value; 1e-5 bounds fp32 with
    room, also where the inner LayerNorm's 1/std amplifies)."""
    from ttt_checks.ttt import inner
    from ttt_checks.ttt.step_probe import scaled_step_losses

    layer = make_layer(config, seed, dtype)
    torch.manual_seed(seed + 1)
    b = config.mini_batch_size
    x = torch.randn(2, b, config.width, dtype=dtype)
    with torch.no_grad():
        rows = layer.project(x, torch.arange(b))
        gamma, beta = layer.ttt_norm_weight.to(dtype), layer.ttt_norm_bias.to(dtype)
        params = layer.initial_state(2, dtype).params
        res = inner.minibatch_step(params, rows["xq"], rows["xk"], rows["target"], rows["sigma"], config, gamma, beta)
        _, lafter, lstart = inner.figure5_losses(params, rows["xk"], rows["target"], res.acts, res.grads, res.eta,
                                                 config, gamma, beta)
        scaled = scaled_step_losses(params, rows["xk"], rows["target"], res.acts, res.grads, res.eta, config, gamma,
                                    beta, (0.0, 1.0))
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == F64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scaled[1], lafter, **tol)
    torch.testing.assert_close(scaled[0], lstart, **tol)
    record, fig5 = probe_pass(layer, torch.cat([x, x], dim=1))
    assert record.loss_at(1.0) == pytest.approx(float(np.average(fig5.lafter, weights=fig5.counts)), rel=1e-9)


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_a_streamed_pass_gives_the_one_pass_line_search(chunk):
    """Fed in calls of ``chunk`` tokens (a streaming layer recomputes an open mini-batch with the
    next call), every complete mini-batch is counted once, with the same losses as in one pass."""
    config = TTTConfig(width=5, num_heads=2, head_dim=4, mini_batch_size=4, base_lr=1.0)
    layer = make_layer(config, 7)
    x = torch.randn(2, 18, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    whole, _ = probe_pass(layer, x)
    probe = Figure5Probe(step_multipliers=GRID)
    with probe.attach({"ttt": layer}), torch.no_grad(), layer.stream():
        for lo in range(0, x.shape[1], chunk):
            layer(x[:, lo: lo + chunk])
    streamed = probe.step_record("ttt")
    assert streamed.count == whole.count == 2 * 2 * 16
    np.testing.assert_allclose(streamed.losses, whole.losses, rtol=1e-12)


def test_a_probe_without_multipliers_runs_no_line_search():
    config = TTTConfig(width=4, num_heads=1, head_dim=4, mini_batch_size=4)
    layer = make_layer(config, 0)
    probe = Figure5Probe()
    with probe.attach({"ttt": layer}), torch.no_grad():
        layer(torch.randn(1, 8, 4, dtype=F64))
    with pytest.raises(Exception, match="without step_multipliers"):
        probe.step_record("ttt")


def test_shorter_than_one_minibatch_is_an_error_not_an_empty_pass():
    """5 tokens at b = 8: Figure 5 has rows (an open mini-batch), the line search has no step."""
    config = TTTConfig(width=4, num_heads=1, head_dim=4, mini_batch_size=8)
    probe = Figure5Probe(step_multipliers=DEFAULT_MULTIPLIERS)
    layer = make_layer(config, 0)
    with probe.attach({"ttt": layer}), torch.no_grad():
        layer(torch.randn(1, 5, 4, dtype=F64))
    assert probe.record("ttt").num_positions == 5
    with pytest.raises(Exception, match="no complete mini-batch"):
        probe.step_record("ttt")


def test_a_step_far_too_large_has_its_best_multiplier_below_one():
    """The same layer with base_lr 1000 instead of 1 overshoots: the probe's best m is 1e-3 (the
    original step), the rule says OVERSHOOT and recommends base_lr 1000 x 1e-3 = 1. One mini-batch
    per sequence, so every step starts from the learned W_0 (after several huge steps the carried
    state itself is wrecked and the line from it can be flat: see docs/health-checks.md, Limits)."""
    config = TTTConfig(width=6, num_heads=2, head_dim=4, mini_batch_size=8, base_lr=1.0, inner="linear")
    layer = make_layer(config, 3)
    x = torch.randn(4, 8, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    normal, _ = probe_pass(layer, x, DEFAULT_MULTIPLIERS)
    big = TTTLayer(TTTConfig(**{**config.to_dict(), "base_lr": 1e3})).to(F64)
    big.load_state_dict(layer.state_dict())
    huge, _ = probe_pass(big, x, DEFAULT_MULTIPLIERS)
    assert huge.best_multiplier == 1e-3 and normal.best_multiplier >= 0.5
    assert huge.best_loss == pytest.approx(normal.loss_at(1.0), rel=1e-9)  # the same step, twice computed
    [verdict] = health.inner_step_size({"ttt": huge}, TH)
    assert not verdict.ok and "OVERSHOOT" in verdict.explanation and "= 1 " in verdict.explanation


# -- the health rule -------------------------------------------------------------------------------

TH = health.load_thresholds(REPO / "pyproject.toml")


def record(losses: dict[float, float], start: float, base_lr: float = 1.0) -> StepSizeRecord:
    return StepSizeRecord("layer", list(losses), list(losses.values()), start, count=100, nonfinite=0, base_lr=base_lr)


def quadratic(optimum: float, start: float = 1.0, gain: float = 0.5) -> dict[float, float]:
    """A loss along the step with its minimum ``start - gain`` at m = optimum."""
    return {m: start - gain * (2 * m / optimum - (m / optimum) ** 2) for m in DEFAULT_MULTIPLIERS}


@pytest.mark.parametrize("optimum", [0.8, 1.0, 1.5, 2.0, 3.0])
def test_a_step_near_its_optimum_passes(optimum):
    [v] = health.inner_step_size({"layer": record(quadratic(optimum), 1.0)}, TH)
    assert v.ok, v.explanation
    assert v.details["recommended_base_lr"] == pytest.approx(v.details["best_multiplier"])


def test_an_overshooting_step_fails_with_both_losses_and_the_recommendation():
    r = record(quadratic(0.4), 1.0, base_lr=10.0)  # the step is 2.5x its optimum
    [v] = health.inner_step_size({"layer": r}, TH)
    assert not v.ok and "OVERSHOOT" in v.explanation
    assert r.best_multiplier == 0.5
    assert f"{r.loss_at(1.0):.4g}" in v.explanation and f"{r.best_loss:.4g}" in v.explanation
    assert "recommended base_lr = 10 x 0.5 = 5" in v.explanation


def test_an_overshoot_within_the_margin_passes():
    """Best at m = 0.5 but the full step gives away only (1/0.7 - 1)^2 = 18% of the best gain."""
    r = record(quadratic(0.7), 1.0)
    assert r.best_multiplier == 0.5 and r.lost_fraction < TH["step_overshoot_margin"]
    [v] = health.inner_step_size({"layer": r}, TH)
    assert v.ok, v.explanation


def test_a_step_worse_than_no_step_at_every_multiplier_fails_as_overshoot():
    flat = {m: 2.3 for m in DEFAULT_MULTIPLIERS}  # a saturated step: the LayerNorm hides its size
    [v] = health.inner_step_size({"layer": record(flat | {1e-6: 2.29}, 2.2, base_lr=1e5)}, TH)
    assert not v.ok and "worse than no step" in v.explanation and "recommended base_lr < 0.1" in v.explanation


def test_no_step_helping_is_overshoot_even_when_the_least_bad_is_the_largest():
    """Saturated: every m is worse than no step and the flat line happens to dip at m = 4; that
    is not a timid step."""
    flat = {m: 2.3 - 1e-4 * m for m in DEFAULT_MULTIPLIERS}
    [v] = health.inner_step_size({"layer": record(flat, 2.2, base_lr=1e5)}, TH)
    assert not v.ok and "OVERSHOOT" in v.explanation and "TIMID" not in v.explanation


def test_a_timid_step_fails_with_the_direction_and_a_lower_bound():
    linear = {m: 1.0 - 1e-4 * m for m in DEFAULT_MULTIPLIERS}  # no curvature: gain(1) / gain(4) = 1/4
    [v] = health.inner_step_size({"layer": record(linear, 1.0, base_lr=1e-6)}, TH)
    assert not v.ok and "TOO TIMID" in v.explanation and "recommended base_lr >= 4e-06" in v.explanation


def test_best_at_four_with_curvature_passes():
    """The quadratic with optimum 3.5 has gain(1) / gain(4) = (2m* - 1) / (8m* - 16) = 1/2:
    mildly timid (healthy-seed1 measures 0.55), not far too timid."""
    [v] = health.inner_step_size({"layer": record(quadratic(3.5), 1.0)}, TH)
    assert v.ok and v.details["best_multiplier"] == 4.0


def test_a_zero_update_is_timid_and_zero_loss_cannot_measure():
    [v] = health.inner_step_size({"layer": record({m: 1.3 for m in DEFAULT_MULTIPLIERS}, 1.3)}, TH)
    assert not v.ok and "exactly zero" in v.explanation
    [v] = health.inner_step_size({"layer": record({m: 0.0 for m in DEFAULT_MULTIPLIERS}, 0.0)}, TH)
    assert not v.ok and v.explanation.startswith("cannot measure")


def test_nan_losses_cannot_measure():
    r = StepSizeRecord("layer", list(DEFAULT_MULTIPLIERS), [float("nan")] * 8, float("nan"), 10, 10, 1.0)
    [v] = health.inner_step_size({"layer": r}, TH)
    assert not v.ok and v.explanation.startswith("cannot measure")


# -- meta-test on the zoo --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_verdicts(tmp_path_factory):
    from ttt_checks.models.registry import resolve
    from ttt_checks.run import HealthRun, RunOptions

    out = {}
    for name in ("healthy-seed0", "healthy-seed1", "lr-too-high", "lr-near-zero"):
        run = HealthRun(resolve(REPO / "fixtures" / "zoo" / name), RunOptions(report_dir=tmp_path_factory.mktemp(name), thresholds=TH))
        out[name] = (run.judge("inner_step_size"), run.metrics()["inner_step_size"])
    return out


@pytest.mark.parametrize("name", ["healthy-seed0", "healthy-seed1"])
def test_healthy_zoo_checkpoints_pass(zoo_verdicts, name):
    verdicts, metrics = zoo_verdicts[name]
    assert verdicts and all(v.ok for v in verdicts), [v.line() for v in verdicts]
    assert all(1.0 <= m["best_multiplier"] <= 4.0 for m in metrics.values())


def test_lr_too_high_fails_as_overshoot(zoo_verdicts):
    verdicts, metrics = zoo_verdicts["lr-too-high"]
    assert any(not v.ok and "OVERSHOOT" in v.explanation for v in verdicts), [v.line() for v in verdicts]
    m = metrics["layers.3.ttt"]
    assert m["best_multiplier"] <= 0.5 and m["recommended_base_lr"] < m["base_lr"]


def test_lr_near_zero_fails_as_too_timid(zoo_verdicts):
    verdicts, metrics = zoo_verdicts["lr-near-zero"]
    assert any(not v.ok and "TOO TIMID" in v.explanation for v in verdicts), [v.line() for v in verdicts]
    m = metrics["layers.3.ttt"]
    assert m["best_multiplier"] == 4.0 and m["recommended_base_lr"] > m["base_lr"]
