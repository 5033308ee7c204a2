"""The TTT core against its definitions: a per-token float64 oracle and exact identities.

Every property is checked in float64 (the layer runs its inner loop in the input's precision
when that is wider than fp32), so agreement is to ~1e-12, not to a loose tolerance.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ttt_checks.metrics.figure5 import record_summary
from ttt_checks.ttt import Figure5Error, Figure5Probe, Figure5Record, GatedTTT, TTTConfig, TTTConfigError, TTTLayer
from ttt_checks.ttt import inner
from ttt_checks.ttt.causality import causality_leak
from ttt_checks.ttt.layer import rope_within_minibatch
from ttt_checks.ttt.oracle import oracle_inner

F64 = torch.float64
TIGHT = dict(rtol=1e-9, atol=1e-11)


@st.composite
def configs(draw, **fixed) -> TTTConfig:
    """Any member of the TTT family at toy size."""
    causal = fixed.get("causal", draw(st.booleans()))
    weighting = fixed.get(
        "eta_weighting", draw(st.sampled_from(["token_index", "uniform"])) if causal else "uniform"
    )
    kind = fixed.get("inner", draw(st.sampled_from(["linear", "mlp"])))
    heads = draw(st.integers(1, 2))
    head_dim = draw(st.integers(2, 5))
    inner_norm = fixed.get("inner_norm", draw(st.booleans()))
    return TTTConfig(
        width=fixed.get("width", draw(st.integers(3, 8))),
        num_heads=heads,
        head_dim=head_dim,
        inner=kind,
        mlp_layers=draw(st.integers(2, 3)) if kind == "mlp" else 2,
        mlp_expansion=draw(st.sampled_from([1.0, 2.0])),
        inner_norm=inner_norm,
        target=fixed.get("target", draw(st.sampled_from(["plain", "layernorm"]))),
        mini_batch_size=fixed.get("mini_batch_size", draw(st.integers(1, 5))),
        base_lr=fixed.get("base_lr", draw(st.sampled_from([0.0, 0.1, 1.0, 3.0]))),
        eta_weighting=weighting,
        causal=causal,
        l2_normalize_qk=draw(st.booleans()),
        shift_keys=fixed.get("shift_keys", draw(st.booleans())),
        output_projection=fixed.get("output_projection", draw(st.booleans())),
    )


def make_layer(config: TTTConfig, seed: int, weight_scale: float = 0.3, rope: bool = False) -> TTTLayer:
    torch.manual_seed(seed)
    layer = TTTLayer(config, rope=rope_within_minibatch(config.mini_batch_size) if rope else None).to(F64)
    with torch.no_grad():
        for w in layer.weights:
            w.normal_(0.0, weight_scale)
        for b in layer.biases:
            b.normal_(0.0, 0.1)
        layer.ttt_norm_weight.normal_(1.0, 0.2)
        layer.ttt_norm_bias.normal_(0.0, 0.1)
        layer.lr_bias.normal_(0.0, 1.0)
    return layer


def run(layer: TTTLayer, x: torch.Tensor) -> tuple[torch.Tensor, Figure5Record]:
    probe = Figure5Probe()
    with probe.attach({"ttt": layer}), torch.no_grad():
        out = layer(x)
    return out, probe.record("ttt")


def oracle_for(layer: TTTLayer, x: torch.Tensor):
    T = x.shape[1]
    with torch.no_grad():
        rows = layer.project(x, torch.arange(T))
    return oracle_inner(
        rows["xq"], rows["xk"], rows["target"], rows["sigma"],
        [w.detach() for w in layer.weights], [b.detach() for b in layer.biases],
        layer.ttt_norm_weight.detach(), layer.ttt_norm_bias.detach(), layer.config,
    )


def layer_output_from_inner(layer: TTTLayer, z: torch.Tensor) -> torch.Tensor:
    B, H, T, d = z.shape
    out = z.transpose(1, 2).reshape(B, T, H * d)
    if layer.config.output_projection:
        out = layer.wo(layer.post_norm(out))
    return out


# --------------------------------------------------------------------------------------------
# Dual form == naive per-token oracle
# --------------------------------------------------------------------------------------------


@given(config=configs(), T=st.integers(1, 11), batch=st.integers(1, 2), seed=st.integers(0, 10_000),
       group=st.integers(1, 4))
def test_dual_form_matches_per_token_oracle_in_every_mode(config, T, batch, seed, group):
    layer = make_layer(config, seed)
    layer.CAPTURE_GROUP = group  # Figure-5 losses of several mini-batches are evaluated together
    x = torch.randn(batch, T, config.width, dtype=F64, generator=torch.Generator().manual_seed(seed))
    out, rec = run(layer, x)
    ref = oracle_for(layer, x)
    with torch.no_grad():
        expected = layer_output_from_inner(layer, ref.output)
    torch.testing.assert_close(out, expected, **TIGHT)
    np.testing.assert_array_equal(rec.positions, np.arange(T))
    np.testing.assert_array_equal(rec.counts, np.full(T, batch * config.num_heads))
    for name in ("l0", "lprev", "lafter", "lmean"):
        np.testing.assert_allclose(getattr(rec, name), getattr(ref, name).mean(dim=(0, 1)).numpy(), **TIGHT)


@given(config=configs(mini_batch_size=1), T=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_minibatch_of_one_is_online_gradient_descent(config, T, seed):
    """b = 1: W_t = W_{t-1} - sigma_t grad loss(W_{t-1}; x_t), written out with autograd here."""
    layer = make_layer(config, seed)
    x = torch.randn(1, T, config.width, dtype=F64, generator=torch.Generator().manual_seed(seed))
    _, rec = run(layer, x)
    with torch.no_grad():
        rows = layer.project(x, torch.arange(T))
    gamma, beta = layer.ttt_norm_weight.detach(), layer.ttt_norm_bias.detach()
    lprev_heads, lafter_heads = np.zeros((config.num_heads, T)), np.zeros((config.num_heads, T))
    for h in range(config.num_heads):
        ws = [w.detach()[h].clone() for w in layer.weights]
        bs = [b.detach()[h].clone() for b in layer.biases]
        for t in range(T):
            k, y = rows["xk"][0, h, t], rows["target"][0, h, t]
            params = [p.requires_grad_(True) for p in ws + bs]
            ip = inner.InnerParams([p[None, None] for p in params[: len(ws)]], [p[None, None] for p in params[len(ws):]])
            lprev = inner.predict_loss(k[None, None, None], y[None, None, None], ip, config, gamma[h:h + 1], beta[h:h + 1])
            grads = torch.autograd.grad(0.5 * lprev.sum() * config.head_dim, params)
            with torch.no_grad():
                step = rows["sigma"][0, h, t]
                ws = [w - step * g for w, g in zip(ws, grads[: len(ws)])]
                bs = [b - step * g for b, g in zip(bs, grads[len(ws):])]
                ip = inner.InnerParams([w[None, None] for w in ws], [b[None, None] for b in bs])
                lafter = inner.predict_loss(k[None, None, None], y[None, None, None], ip, config, gamma[h:h + 1], beta[h:h + 1])
            lprev_heads[h, t], lafter_heads[h, t] = float(lprev.detach()), float(lafter)
    np.testing.assert_allclose(rec.lprev, lprev_heads.mean(axis=0), **TIGHT)
    np.testing.assert_allclose(rec.lafter, lafter_heads.mean(axis=0), **TIGHT)


@given(config=configs(base_lr=0.0), T=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_zero_step_size_gives_three_identical_curves(config, T, seed):
    layer = make_layer(config, seed)
    _, rec = run(layer, torch.randn(2, T, config.width, dtype=F64))
    np.testing.assert_allclose(rec.lprev, rec.l0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rec.lafter, rec.l0, rtol=1e-12, atol=1e-14)


@given(
    config=configs(inner="linear", inner_norm=False, mini_batch_size=1, target="plain"),
    T=st.integers(1, 10),
    seed=st.integers(0, 10_000),
)
def test_linear_inner_model_obeys_exact_single_token_descent_identity(config, T, seed):
    """Linear f, no LN, one token: loss(W_t) = (1 - eta (||k||^2 + 1))^2 loss(W_{t-1})."""
    layer = make_layer(config, seed)
    x = torch.randn(1, T, config.width, dtype=F64)
    probe = Figure5Probe()
    with probe.attach({"ttt": layer}), torch.no_grad():
        layer(x)
        rows = layer.project(x, torch.arange(T))
    # Per-head values: rerun per head through the oracle-free identity.
    lprev_heads, lafter_heads = _per_head_curves(layer, x)
    k2 = rows["xk"].pow(2).sum(-1)[0]  # [H, T]
    factor = (1.0 - rows["sigma"][0] * (k2 + 1.0)) ** 2
    torch.testing.assert_close(lafter_heads, factor * lprev_heads, rtol=1e-9, atol=1e-12)


def _per_head_curves(layer: TTTLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ref = oracle_for(layer, x)
    return ref.lprev[0], ref.lafter[0]


# --------------------------------------------------------------------------------------------
# Causality, gate, streaming, NaN
# --------------------------------------------------------------------------------------------


@given(config=configs(causal=True), T=st.integers(2, 12), data=st.data())
def test_causal_layer_ignores_the_future(config, T, data):
    layer = make_layer(config, data.draw(st.integers(0, 1000)))
    t = data.draw(st.integers(0, T - 2))
    x = torch.randn(2, T, config.width, dtype=F64)
    leak = causality_leak(layer, x, t)
    assert leak.causal, f"outputs at positions {leak.changed_positions} moved by {leak.max_abs_change}"
    # Figure-5 values at positions <= t do not move either.
    perturbed = x.clone()
    perturbed[:, t + 1 :] = torch.randn_like(perturbed[:, t + 1 :])
    _, a = run(layer, x)
    _, b = run(layer, perturbed)
    for name in ("l0", "lprev", "lafter", "lmean"):
        np.testing.assert_array_equal(getattr(a, name)[: t + 1], getattr(b, name)[: t + 1])


def test_non_causal_leak_is_measured_inside_the_minibatch_only():
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mini_batch_size=4, causal=False,
                       eta_weighting="uniform", target="layernorm", l2_normalize_qk=True)
    layer = make_layer(config, 3)
    x = torch.randn(1, 12, 8, dtype=F64)
    leak = causality_leak(layer, x, position=5)
    # Positions 4 and 5 share a mini-batch with 6 and 7: they see the future; 0..3 do not.
    assert leak.changed_positions == (4, 5)
    assert leak.max_abs_change > 1e-6


def test_gate_at_zero_is_an_exact_identity_and_blocks_ttt_gradients():
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mini_batch_size=4)
    block = GatedTTT(config, alpha_init=0.0).to(F64)
    x = torch.randn(2, 9, 8, dtype=F64, requires_grad=True)
    out = block(x)
    assert torch.equal(out, x)
    out.pow(2).sum().backward()
    for name, p in block.ttt.named_parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert block.alpha.grad is not None and torch.count_nonzero(block.alpha.grad) > 0


@given(alpha=st.floats(-10, 10), seed=st.integers(0, 1000))
def test_gate_moves_output_by_at_most_tanh_alpha_times_ttt(alpha, seed):
    config = TTTConfig(width=6, num_heads=2, head_dim=3, mini_batch_size=2)
    torch.manual_seed(seed)
    block = GatedTTT(config, alpha_init=alpha).to(F64)
    x = torch.randn(1, 5, 6, dtype=F64)
    with torch.no_grad():
        moved = (block(x) - x).norm()
        bound = torch.tanh(block.alpha.clamp(-3, 3)).abs().max() * block.ttt(x).norm()
    assert float(moved) <= float(bound) * (1 + 1e-12) + 1e-15


def test_gate_override_per_batch_row_equals_one_gate_at_a_time():
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mini_batch_size=4)
    block = GatedTTT(config, alpha_init=0.05).to(F64)
    x = torch.randn(1, 10, 8, dtype=F64).expand(3, -1, -1)
    gates = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    with torch.no_grad(), block.override_gate(gates):
        batched = block(x)
    for i, g in enumerate(gates):
        with torch.no_grad(), block.override_gate(float(g)):
            torch.testing.assert_close(batched[i : i + 1], block(x[:1]), rtol=0, atol=1e-14)
    assert block.gate_override is None


@st.composite
def chunkings(draw, T: int, multiple_of: int = 1) -> list[int]:
    sizes, left = [], T
    while left > 0:
        step = draw(st.integers(1, max(1, left // multiple_of))) * multiple_of if multiple_of > 1 else draw(st.integers(1, left))
        step = min(step, left)
        sizes.append(step)
        left -= step
    return sizes


@given(config=configs(), data=st.data(), seed=st.integers(0, 1000))
def test_streaming_in_chunks_equals_one_pass(config, data, seed):
    """Causal: any chunking. Non-causal: chunks that are whole mini-batches (the rest leaks)."""
    b = config.mini_batch_size
    T = data.draw(st.integers(1, 4)) * b + (data.draw(st.integers(0, b - 1)) if config.causal else 0)
    sizes = data.draw(chunkings(T, 1 if config.causal else b))
    layer = make_layer(config, seed, rope=config.head_dim % 2 == 0)
    x = torch.randn(2, T, config.width, dtype=F64)
    one_pass, rec_one = run(layer, x)
    probe = Figure5Probe()
    pieces, start = [], 0
    with probe.attach({"ttt": layer}), torch.no_grad(), layer.stream():
        for size in sizes:
            pieces.append(layer(x[:, start : start + size]))
            start += size
    streamed = torch.cat(pieces, dim=1)
    torch.testing.assert_close(streamed, one_pass, **TIGHT)
    rec = probe.record("ttt")
    np.testing.assert_array_equal(rec.positions, rec_one.positions)
    np.testing.assert_array_equal(rec.counts, rec_one.counts)
    for name in ("l0", "lprev", "lafter", "lmean"):
        np.testing.assert_allclose(getattr(rec, name), getattr(rec_one, name), **TIGHT)


@given(config=configs(shift_keys=True), T=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_shifted_keys_are_the_keys_of_the_previous_input(config, T, seed):
    """shift_keys: k_t of x equals k_t of an unshifted layer fed x moved one step right (zeros first),
    while q_t and the step sizes still read x_t; built independently of the layer's own shift."""
    layer = make_layer(config, seed)
    plain = make_layer(dataclasses.replace(config, shift_keys=False), seed)
    x = torch.randn(2, T, config.width, dtype=F64, generator=torch.Generator().manual_seed(seed))
    moved = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    with torch.no_grad():
        shifted, own, of_moved = layer.project(x, torch.arange(T)), plain.project(x, torch.arange(T)), plain.project(moved, torch.arange(T))
    torch.testing.assert_close(shifted["xk"], of_moved["xk"], rtol=0, atol=0)
    torch.testing.assert_close(shifted["xq"], own["xq"], rtol=0, atol=0)
    torch.testing.assert_close(shifted["sigma"], own["sigma"], rtol=0, atol=0)


def test_shift_keys_is_left_out_of_configs_that_do_not_use_it():
    """Checkpoints written before the field existed keep byte-identical configs; a set flag round-trips."""
    config = TTTConfig(width=8, num_heads=2, head_dim=4)
    assert "shift_keys" not in config.to_dict()
    shifted = dataclasses.replace(config, shift_keys=True)
    assert shifted.to_dict()["shift_keys"] is True
    assert TTTConfig.from_dict(shifted.to_dict()) == shifted


def test_streaming_state_departs_from_initial_weights_after_first_minibatch():
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mini_batch_size=4, base_lr=1.0)
    layer = make_layer(config, 0)
    x = torch.randn(1, 12, 8, dtype=F64)
    _, rec = run(layer, x)
    np.testing.assert_allclose(rec.lprev[:1], rec.l0[:1])  # first token: nothing learned yet
    assert np.all(np.abs(rec.lprev[4:] - rec.l0[4:]) > 1e-9)


def test_state_reset_bug_makes_lprev_equal_l0_at_every_call():
    """The user's 2-layer code restarted from W_0 at every streaming step."""
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mini_batch_size=1, base_lr=1.0)
    layer = make_layer(config, 0)
    layer.reset_state_each_call = True
    probe = Figure5Probe()
    x = torch.randn(1, 6, 8, dtype=F64)
    with probe.attach({"ttt": layer}), torch.no_grad(), layer.stream():
        for t in range(6):
            layer(x[:, t : t + 1])
    rec = probe.record("ttt")
    np.testing.assert_array_equal(rec.positions, np.arange(6))
    np.testing.assert_allclose(rec.lprev, rec.l0, rtol=1e-12)


@given(config=configs(), data=st.data(), seed=st.integers(0, 1000))
def test_lmean_is_a_baseline_of_the_sequence_that_a_state_reset_or_a_late_probe_does_not_move(config, data, seed):
    """The mean predictor learns only the targets' mean, from every target the stream has seen:
    the reset bug (inner weights back to W_0 at each call, open rows dropped) leaves it equal to
    the one-pass lmean, and a probe attached after some calls gets lmean as if it had listened
    from the first token."""
    b = config.mini_batch_size
    T = data.draw(st.integers(2, 4)) * b + data.draw(st.integers(0, b - 1))
    sizes = data.draw(chunkings(T, 1))
    layer = make_layer(config, seed)
    x = torch.randn(2, T, config.width, dtype=F64)
    _, one_pass = run(layer, x)
    late = Figure5Probe()
    with torch.no_grad(), layer.stream():
        layer(x[:, : sizes[0]])  # nobody listens to the first call
        with late.attach({"ttt": layer}):
            start = sizes[0]
            for size in sizes[1:]:
                layer(x[:, start : start + size])
                start += size
    if len(sizes) > 1:
        rec_late = late.record("ttt")
        np.testing.assert_allclose(rec_late.lmean, one_pass.lmean[rec_late.positions], **TIGHT)
    layer.reset_state_each_call = True
    reset = Figure5Probe()
    with reset.attach({"ttt": layer}), torch.no_grad(), layer.stream():
        start = 0
        for size in sizes:
            layer(x[:, start : start + size])
            start += size
    np.testing.assert_allclose(reset.record("ttt").lmean, one_pass.lmean, **TIGHT)


def test_lmean_of_a_constant_target_is_its_energy_at_position_0_and_0_after():
    """The empty mean predicts 0; from t = 1 on, the mean of identical targets is that target (exact
    for a target of 0.5: sums of 0.5 and their division by the count are exact in binary)."""
    y = torch.full((1, 1, 7, 3), 0.5, dtype=F64)
    lmean, carried = inner.mean_predictor_loss(y, torch.zeros(1, 1, 1, 3, dtype=F64), 0, carry_rows=4)
    assert lmean[0, 0, 0].item() == 0.25 and (lmean[0, 0, 1:] == 0).all()
    assert carried.flatten().tolist() == [2.0, 2.0, 2.0]
    # continued from that carried sum (a later streaming call), the mean is still exact
    more, _ = inner.mean_predictor_loss(y[..., :2, :], carried, 4, carry_rows=0)
    assert (more == 0).all()


@given(config=configs(), T=st.integers(2, 10), data=st.data())
def test_nan_input_is_detected_in_the_record_not_averaged_away(config, T, data):
    layer = make_layer(config, 0)
    x = torch.randn(2, T, config.width, dtype=F64)
    bad = data.draw(st.integers(0, T - 1))
    x[1, bad, data.draw(st.integers(0, config.width - 1))] = float("nan")
    _, rec = run(layer, x)
    assert not rec.finite
    assert rec.nonfinite[bad] > 0
    summary = record_summary(rec)
    assert np.isnan(summary["l0"]) or np.isnan(summary["lafter"])


# --------------------------------------------------------------------------------------------
# Pieces: hand-written derivatives, last row = carried state, per-mini-batch view, records
# --------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 10_000), d=st.integers(2, 8), scale=st.sampled_from([1e-4, 1.0, 100.0]))
def test_layer_norm_l2_grad_matches_autograd(seed, d, scale):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(1, 2, 3, d, generator=g, dtype=F64) * scale).requires_grad_(True)
    gamma, beta = torch.randn(2, d, generator=g, dtype=F64), torch.randn(2, d, generator=g, dtype=F64)
    y = torch.randn(1, 2, 3, d, generator=g, dtype=F64)
    out, x_hat, inv_std = inner.layer_norm(z, gamma, beta, 1e-6)
    (0.5 * (out - y).pow(2).sum()).backward()
    manual = inner.layer_norm_l2_grad(x_hat, inv_std, gamma, (out - y).detach())
    torch.testing.assert_close(manual, z.grad, rtol=1e-8, atol=1e-10)
    assert torch.isfinite(manual).all()


@given(x=st.lists(st.floats(-20, 20), min_size=1, max_size=20))
def test_gelu_tanh_grad_matches_autograd(x):
    t = torch.tensor(x, dtype=F64, requires_grad=True)
    torch.nn.functional.gelu(t, approximate="tanh").sum().backward()
    torch.testing.assert_close(inner.gelu_tanh_grad(t.detach()), t.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(inner.gelu_tanh(t.detach()), torch.nn.functional.gelu(t.detach(), approximate="tanh"))


@given(config=configs(causal=True, inner_norm=False), seed=st.integers(0, 1000))
def test_last_row_of_a_minibatch_uses_the_carried_state(config, seed):
    """Causal code: z_b = f(q_b; W_end), the state the next mini-batch starts from."""
    layer = make_layer(config, seed)
    b = config.mini_batch_size
    x = torch.randn(1, 2 * b, config.width, dtype=F64)
    with torch.no_grad(), layer.stream():
        layer(x[:, :b])
        state = layer.state
        rows = layer.project(x[:, :b], torch.arange(b))
    gamma, beta = layer.ttt_norm_weight.detach(), layer.ttt_norm_bias.detach()
    pred = inner.inner_forward(rows["xq"][..., -1:, :], state.params, config, gamma, beta).prediction
    ref = oracle_for(layer, x[:, :b]).output[..., -1:, :]
    expected = ref - rows["xq"][..., -1:, :] if config.inner_residual else ref
    torch.testing.assert_close(pred, expected, **TIGHT)


def test_per_minibatch_view_matches_the_jax_statistics():
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mini_batch_size=4, causal=False,
                       eta_weighting="uniform", target="layernorm")
    layer = make_layer(config, 1)
    _, rec = run(layer, torch.randn(2, 14, 8, dtype=F64))
    np.testing.assert_array_equal(rec.minibatch_end, [3, 7, 11])  # the open tail is not a mini-batch
    np.testing.assert_allclose(rec.init, rec.l0[[3, 7, 11]], **TIGHT)
    np.testing.assert_allclose(rec.step_0, rec.lprev[[3, 7, 11]], **TIGHT)  # non-causal: lprev = start
    np.testing.assert_allclose(rec.step_1, rec.lafter[[3, 7, 11]], **TIGHT)


def test_record_round_trips_through_npz_and_refuses_to_be_empty(tmp_path):
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mini_batch_size=4)
    _, rec = run(make_layer(config, 0), torch.randn(1, 9, 8, dtype=F64))
    path = rec.save(tmp_path / "figure5_layer0.npz")
    back = Figure5Record.load(path)
    for name in ("positions", "l0", "lprev", "lafter", "lmean", "counts", "nonfinite", "minibatch_end", "init"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rec, name))
    assert back.meta["mini_batch_size"] == 4
    # A record saved before lmean was captured reads back without it (None, never zeros or NaN)
    old = dataclasses.replace(rec, lmean=None)
    old_back = Figure5Record.load(old.save(tmp_path / "figure5_old.npz"))
    assert old_back.lmean is None and old_back.curves == ("l0", "lprev", "lafter") and old_back.finite
    np.testing.assert_array_equal(old_back.l0, rec.l0)
    empty = dict(positions=np.zeros(0, int), l0=np.zeros(0), lprev=np.zeros(0), lafter=np.zeros(0),
                 counts=np.zeros(0, int), nonfinite=np.zeros(0, int))
    with pytest.raises(Figure5Error, match="no Figure-5 data collected"):
        Figure5Record(layer="layers.3", **empty)


def test_probe_names_a_layer_that_never_reported():
    probe = Figure5Probe()
    config = TTTConfig(width=8, num_heads=2, head_dim=4)
    layer = TTTLayer(config)
    with probe.attach({"layers.1.ttt": layer}):
        pass  # the model never ran this layer
    with pytest.raises(Figure5Error, match="layers.1.ttt"):
        probe.records()
    with pytest.raises(Figure5Error, match="never attached"):
        probe.record("layers.9.ttt")


def test_probe_averages_over_sequences():
    config = TTTConfig(width=8, num_heads=1, head_dim=4, mini_batch_size=2)
    layer = make_layer(config, 0)
    x1, x2 = torch.randn(1, 5, 8, dtype=F64), torch.randn(1, 5, 8, dtype=F64)
    _, r1 = run(layer, x1)
    _, r2 = run(layer, x2)
    probe = Figure5Probe()
    with probe.attach({"ttt": layer}), torch.no_grad():
        layer(x1)
        layer(x2)
    both = probe.record("ttt")
    np.testing.assert_array_equal(both.counts, 2 * r1.counts)
    np.testing.assert_allclose(both.lafter, (r1.lafter + r2.lafter) / 2, **TIGHT)


def test_outer_loop_trains_every_ttt_parameter():
    """W_0, the step-size weights, the inner norm and the gate all receive gradient."""
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mini_batch_size=4, inner="mlp")
    block = GatedTTT(config, alpha_init=0.1)
    block(torch.randn(2, 10, 8)).pow(2).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("shift_keys", [False, True])
@pytest.mark.parametrize("target", ["plain", "layernorm"])
def test_outer_gradients_match_the_oracle_through_its_inner_gradients(shift_keys, target):
    """The outer loop trains through the inner loop: the gradients of the layer's output wrt every TTT
    parameter (W_0, projections, step sizes, norms) equal those of the per-token oracle, whose inner
    gradients come from autograd (double backward) instead of the hand-written LayerNorm and GELU
    derivatives and fused kernels of inner.py. Two and a half mini-batches, so the carried state, a
    partial mini-batch and the mini-batch split's backward are all in the graph."""
    config = TTTConfig(width=6, num_heads=2, head_dim=3, inner="mlp", mlp_expansion=2.0, mini_batch_size=4,
                       base_lr=1.0, eta_weighting="uniform", causal=True, target=target, l2_normalize_qk=True,
                       shift_keys=shift_keys, output_projection=True)
    layer = make_layer(config, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 10, config.width, dtype=F64, generator=gen)
    weight = torch.randn(2, 10, config.width, dtype=F64, generator=gen)
    params = [p for _, p in sorted(layer.named_parameters())]
    fast = torch.autograd.grad((layer(x) * weight).sum(), params)
    rows = layer.project(x, torch.arange(10))
    ref = oracle_inner(rows["xq"], rows["xk"], rows["target"], rows["sigma"], list(layer.weights), list(layer.biases),
                       layer.ttt_norm_weight, layer.ttt_norm_bias, config, create_graph=True)
    slow = torch.autograd.grad((layer_output_from_inner(layer, ref.output) * weight).sum(), params)
    for (name, _), a, b in zip(sorted(layer.named_parameters()), fast, slow):
        torch.testing.assert_close(a, b, **TIGHT, msg=lambda m: f"{name}: {m}")


def test_gelu_tanh_derivatives_match_the_formula():
    """The inner GELU's first and second derivatives (what the outer loop trains through) agree with the
    spelled-out formula, on a transposed (non-contiguous) gradient too."""
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(5, 7, dtype=F64, generator=gen)).requires_grad_(True)
    g = torch.randn(7, 5, dtype=F64, generator=gen).t().requires_grad_(True)  # non-contiguous
    torch.autograd.gradgradcheck(inner.gelu_tanh, (x,))
    (grad,) = torch.autograd.grad(inner.gelu_tanh(x), x, g)
    torch.testing.assert_close(grad, g * inner.gelu_tanh_grad(x), **TIGHT)


def test_bf16_model_runs_its_inner_loop_in_fp32():
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mini_batch_size=4)
    layer = make_layer(config, 0).to(torch.bfloat16)
    x = torch.randn(1, 8, 8).to(torch.bfloat16)
    rows = layer.project(x, torch.arange(8))
    assert rows["xk"].dtype == torch.float32
    out, rec = run(layer, x)
    assert out.dtype == torch.bfloat16 and rec.finite


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(inner="mlp", mlp_layers=1), "mlp_layers >= 2"),
        (dict(causal=False, eta_weighting="token_index"), "only defined for causal"),
        (dict(mini_batch_size=0), "mini_batch_size"),
        (dict(base_lr=-1.0), "base_lr"),
        (dict(target="zscore"), "target"),
    ],
)
def test_invalid_config_is_refused_with_the_field_named(kwargs, message):
    with pytest.raises(TTTConfigError, match=message):
        TTTConfig(width=8, num_heads=2, head_dim=4, **kwargs)


def test_config_round_trips_and_rejects_unknown_fields():
    config = TTTConfig(width=8, num_heads=2, head_dim=4, mlp_hidden=(6,))
    assert TTTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TTTConfigError, match="unknown field"):
        TTTConfig.from_dict({**config.to_dict(), "ttt_lr": 1})


@given(config=configs(), T=st.integers(1, 11), seed=st.integers(0, 10_000))
def test_inner_step_scale_zero_keeps_w0_at_every_token(config, T, seed):
    """inner_step_scale = 0 is the layer with base_lr 0: W_t = W_0, so l0 = lprev = lafter, and the
    output is f(q; W_0). The scale is restored to 1 by the caller (here by hand)."""
    layer = make_layer(config, seed)
    still = make_layer(dataclasses.replace(config, base_lr=0.0), seed)
    x = torch.randn(1, T, config.width, dtype=F64, generator=torch.Generator().manual_seed(seed))
    layer.inner_step_scale = 0.0
    out, rec = run(layer, x)
    ref, _ = run(still, x)
    torch.testing.assert_close(out, ref, **TIGHT)
    np.testing.assert_allclose(rec.lprev, rec.l0, **TIGHT)
    np.testing.assert_allclose(rec.lafter, rec.l0, **TIGHT)
