"""PatchBank and MPNLayer: growth, freezing, resizing, exact merge on Linear and Conv1D."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_mpn.tuner import layer as layer_module
from peft_mpn.tuner.layer import (
    MPNLayer,
    PatchBank,
    append_input_units,
    append_output_units,
    truncate_input_units,
    truncate_output_units,
)


def test_bank_grow_freeze_unfreeze_resize():
    bank = PatchBank("key", 4, dtype=torch.float32)
    bank.add(torch.ones(1, 4), torch.zeros(1))
    bank.add(2 * torch.ones(2, 4), torch.ones(2))
    assert bank.num_patches == 2 and bank.num_neurons == 3 and bank.sizes.tolist() == [1, 2]
    full = bank.weight().detach().clone()
    bank.freeze()
    assert len(bank.weights) == 0 and int(bank.num_frozen) == 2
    assert torch.equal(bank.weight(), full) and not bank.frozen_weight.requires_grad
    bank.add(3 * torch.ones(1, 4), torch.zeros(1))
    bank.unfreeze()
    assert [w.shape[0] for w in bank.weights] == [1, 2, 1] and int(bank.num_frozen) == 0
    assert torch.equal(bank.weight()[:3], full)
    bank.resize([2, 1], num_frozen=1)
    assert bank.frozen_weight.shape == (2, 4) and [w.shape for w in bank.weights] == [(1, 4)]
    with pytest.raises(ValueError, match="num_frozen"):
        bank.resize([1], num_frozen=2)


def test_value_bank_has_no_bias():
    bank = PatchBank("value", 5, dtype=torch.float32)
    bank.add(torch.ones(1, 5), None)
    assert bank.bias() is None and len(bank.biases) == 0


@pytest.mark.parametrize("kind", ["linear", "conv1d", "linear-nobias"])
def test_append_and_truncate_units_are_exact(kind):
    torch.manual_seed(0)
    module = Conv1D(6, 4) if kind == "conv1d" else nn.Linear(4, 6, bias=kind == "linear")  # 4 -> 6
    x = torch.randn(3, 4)
    before = module(x).detach()
    k, b = torch.randn(2, 4), torch.randn(2)
    append_output_units(module, k, b)
    out = module(x)
    assert out.shape == (3, 8)
    assert torch.allclose(out[:, :6], before, atol=1e-6) and torch.allclose(out[:, 6:], x @ k.T + b, atol=1e-6)
    truncate_output_units(module, 2, drop_bias=kind == "linear-nobias")
    assert torch.equal(module(x), before)

    h = torch.randn(3, 6)
    value = nn.Linear(6, 4) if kind != "conv1d" else Conv1D(4, 6)
    base = value(h).detach()
    v = torch.randn(2, 4)
    append_input_units(value, v)
    extra = torch.randn(3, 2)
    assert torch.allclose(value(torch.cat([h, extra], -1)), base + extra @ v, atol=1e-6)
    truncate_input_units(value, 2)
    assert torch.equal(value(h), base)


def test_layer_rejects_unknown_role_and_module():
    with pytest.raises(ValueError, match="role must be one of"):
        MPNLayer(nn.Linear(2, 2), "gate", "b", "default")
    with pytest.raises(TypeError, match="nn.Linear and transformers' Conv1D"):
        MPNLayer(nn.Conv2d(1, 1, 1), "key", "b", "default")


def test_key_and_value_layers_work_as_a_pair():
    torch.manual_seed(0)
    key = MPNLayer(nn.Linear(4, 8), "key", "block", "default")
    value = MPNLayer(nn.Linear(8, 4), "value", "block", "default")
    k, b, v = torch.randn(1, 4), torch.tensor([0.5]), torch.randn(1, 4)
    key.bank("default").add(k, b)
    value.bank("default").add(v, None)
    x = torch.randn(5, 4)
    hidden = torch.relu(key(x))
    assert hidden.shape == (5, 9)
    expected = value.base_layer(hidden[:, :8]) + torch.relu(x @ k.T + b) @ v
    assert torch.allclose(value(hidden), expected, atol=1e-6)
    with pytest.raises(RuntimeError, match="disagree"):
        value(torch.cat([hidden, hidden[:, :1]], -1))
    with pytest.raises(KeyError, match="No MPN adapter named 'x'"):
        key.bank("x")


# ---------------------------------------------------------------------- fused inference weights
def patched_pair(kind: str, sharpness: float = 10.0, seed: int = 0) -> tuple[MPNLayer, MPNLayer]:
    """Key and value wrappers of one FFN block (4 -> 8 -> 4) with two frozen patches."""
    torch.manual_seed(seed)
    if kind == "conv1d":
        key = MPNLayer(Conv1D(8, 4), "key", "block", "default", sharpness=sharpness)
        value = MPNLayer(Conv1D(4, 8), "value", "block", "default", sharpness=sharpness)
    else:
        key = MPNLayer(nn.Linear(4, 8, bias=kind == "linear"), "key", "block", "default", sharpness=sharpness)
        value = MPNLayer(nn.Linear(8, 4), "value", "block", "default", sharpness=sharpness)
    for _ in range(2):
        key.bank("default").add(torch.randn(1, 4), torch.randn(1), requires_grad=False)
        value.bank("default").add(torch.randn(1, 4), None, requires_grad=False)
    key.bank("default").freeze()
    value.bank("default").freeze()
    return key, value


def ffn(key: MPNLayer, value: MPNLayer, x: torch.Tensor) -> torch.Tensor:
    return value(torch.nn.functional.gelu(key(x)))


@pytest.mark.parametrize("kind", ["linear", "linear-nobias", "conv1d"])
def test_fused_forward_equals_the_separate_products(kind, monkeypatch):
    key, value = patched_pair(kind)
    x = torch.randn(3, 40, 4)  # 120 token rows: enough to build the fused weight
    with torch.no_grad():
        fused = ffn(key, value, x)
        assert "_fused_cache" in key.__dict__ and "_fused_cache" in value.__dict__
        monkeypatch.setattr(MPNLayer, "FUSE", False)
        separate = ffn(key, value, x)
    assert fused.shape == (3, 40, 4)
    torch.testing.assert_close(fused, separate, atol=1e-5, rtol=1e-5)


def test_fused_weight_is_reused_and_follows_every_change():
    key, value = patched_pair("linear")
    x = torch.randn(100, 4)
    with torch.no_grad():
        ffn(key, value, x)
        cached = key.__dict__["_fused_cache"][2]
        ffn(key, value, x)
        assert key.__dict__["_fused_cache"][2] is cached  # reused, not rebuilt
        key.bank("default").frozen_weight.mul_(2.0)  # in place: seen through the tensor version
        doubled = key(x)
        assert key.__dict__["_fused_cache"][2] is not cached
        key.bank("default").add(torch.randn(1, 4), torch.zeros(1), requires_grad=False)  # a new patch
        value.bank("default").add(torch.randn(1, 4), None, requires_grad=False)
        grown = key(x)
    assert grown.shape == (100, 11)
    bank = key.bank("default")
    torch.testing.assert_close(doubled[:, 8:], (x @ bank.frozen_weight.T + bank.frozen_bias) * 10, atol=1e-4, rtol=0)
    torch.testing.assert_close(grown[:, 8:10], doubled[:, 8:], atol=1e-5, rtol=0)


def test_no_fusion_for_gradients_captures_or_small_inputs():
    key, value = patched_pair("linear")
    key.bank("default").add(torch.randn(1, 4), torch.zeros(1))  # trainable
    value.bank("default").add(torch.randn(1, 4), None)
    x = torch.randn(100, 4)
    out = ffn(key, value, x)  # grad mode with a trainable patch: the separate products, with the gradient
    out.sum().backward()
    assert key.bank("default").weights[-1].grad is not None and "_fused_cache" not in key.__dict__
    with torch.no_grad():
        ffn(key, value, x[:3])  # 3 rows: not worth building the fused weight
        assert "_fused_cache" not in key.__dict__
        captured = {}
        key.capture_to = ("default", captured)
        key(x)
        key.capture_to = None
        assert captured["block"].shape == (100, 3) and "_fused_cache" not in key.__dict__
        ffn(key, value, x)  # no gradient needed: fused, trainable patch included
        assert "_fused_cache" in key.__dict__


@pytest.mark.parametrize("fuse", [True, False])
def test_aligned_blocks_are_padded_with_silent_units(fuse, monkeypatch):
    """A block of width 16 with 3 patch units runs at width 32: 13 zero units that change nothing."""
    monkeypatch.setattr(MPNLayer, "FUSE", fuse)
    torch.manual_seed(0)
    key = MPNLayer(nn.Linear(4, 16), "key", "block", "default", sharpness=10.0)
    value = MPNLayer(nn.Linear(16, 4), "value", "block", "default", sharpness=10.0)
    k, b, v = torch.randn(3, 4), torch.randn(3), torch.randn(3, 4)
    key.bank("default").add(k, b, requires_grad=False)
    value.bank("default").add(v, None, requires_grad=False)
    x = torch.randn(80, 4)
    with torch.no_grad():
        hidden = key(x)
        out = value(torch.nn.functional.gelu(hidden))
    assert hidden.shape == (80, 32) and torch.equal(hidden[:, 19:], torch.zeros(80, 13))
    expected = value.base_layer(torch.nn.functional.gelu(key.base_layer(x)))
    expected = expected + torch.nn.functional.gelu(10 * (x @ k.T + b)) @ v / 10
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="expected 32"):
        value(hidden[:, :19])


# ---------------------------------------------------------------------- sparse inference (MPNLayer.SPARSE)
def sparse_pair(
    kind: str = "linear", neurons: int = 48, silent: int = 32, seed: int = 0
) -> tuple[MPNLayer, MPNLayer, torch.Tensor]:
    """Key and value wrappers (4 -> 16 -> 4) with ``neurons`` frozen one-neuron patches; ``silent`` never fire.

    Returns the two layers and the indices of the patches that can fire (bias 0 instead of -100).
    """
    torch.manual_seed(seed)
    if kind == "conv1d":
        key = MPNLayer(Conv1D(16, 4), "key", "block", "default", sharpness=10.0, gated=False)
        value = MPNLayer(Conv1D(4, 16), "value", "block", "default", sharpness=10.0, gated=False)
    else:
        key = MPNLayer(nn.Linear(4, 16, bias=kind == "linear"), "key", "block", "default", sharpness=10.0, gated=False)
        value = MPNLayer(nn.Linear(16, 4), "value", "block", "default", sharpness=10.0, gated=False)
    order = torch.randperm(neurons)
    bias = torch.zeros(neurons)
    bias[order[:silent]] = -100.0
    key.bank("default").add(torch.randn(neurons, 4), bias, requires_grad=False)
    value.bank("default").add(torch.randn(neurons, 4), None, requires_grad=False)
    key.bank("default").freeze()
    value.bank("default").freeze()
    return key.eval(), value.eval(), order[silent:].sort().values


@pytest.mark.parametrize("screen", ["fp32", "bf16"])
def test_sparse_forward_keeps_only_firing_units_and_equals_the_dense_one(screen, monkeypatch):
    monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 16)
    monkeypatch.setattr(MPNLayer, "SCREEN", screen)
    key, value, firing = sparse_pair()
    x = torch.randn(2, 50, 4)
    with torch.no_grad():
        monkeypatch.setattr(MPNLayer, "SPARSE", False)
        dense = ffn(key, value, x)
        monkeypatch.setattr(MPNLayer, "SPARSE", True)
        probe = ffn(key, value, x)  # first pass: the activation is probed, the result is the dense one
        assert key.__dict__["_sparse_state"] == {"silent_below": -6.0}  # GELU is exactly 0 from -6 on
        hidden = key(x)
        assert key.__dict__["_sparse_state"]["kept"] == 16
        plan = layer_module._plans()["block"]
        sparse = value(torch.nn.functional.gelu(hidden))
    assert torch.equal(probe, dense)
    assert hidden.shape == (2, 50, 16 + 16)  # 16 base units, the 16 firing patch units, no padding needed
    assert torch.equal(plan.index, firing) and "block" not in layer_module._plans()  # consumed
    torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("screen", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["linear", "linear-nobias", "conv1d"])
def test_sparse_forward_pads_and_matches_on_every_layer_kind(kind, screen, monkeypatch):
    monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 16)
    monkeypatch.setattr(MPNLayer, "SCREEN", screen)
    key, value, firing = sparse_pair(kind, neurons=40, silent=37)
    x = torch.randn(100, 4)
    with torch.no_grad():
        monkeypatch.setattr(MPNLayer, "SPARSE", False)
        dense = ffn(key, value, x)
        monkeypatch.setattr(MPNLayer, "SPARSE", True)
        ffn(key, value, x)
        hidden = key(x)
        sparse = value(torch.nn.functional.gelu(hidden))
    assert hidden.shape == (100, 32) and torch.equal(hidden[:, 19:], torch.zeros(100, 13))  # 3 kept, 13 padding
    torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("act", "silent_below"),
    [(torch.relu, 0.0), (torch.nn.functional.silu, -104.0), (torch.tanh, None), (lambda h: h * 0.5, None)],
)
def test_probe_finds_where_the_activation_is_exactly_silent(act, silent_below, monkeypatch):
    """ReLU is 0 below 0, SiLU only from -104; tanh and a scaling never are: the block stays dense, exactly."""
    monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 16)
    key, value, _ = sparse_pair()
    x = torch.randn(80, 4)
    with torch.no_grad():
        monkeypatch.setattr(MPNLayer, "SPARSE", False)
        dense = value(act(key(x)))
        monkeypatch.setattr(MPNLayer, "SPARSE", True)
        outputs = [value(act(key(x))) for _ in range(2)]
    found = key.__dict__["_sparse_state"]["silent_below"]
    if silent_below is None:
        assert found != found  # NaN: never silent, so never sparse
        assert all(torch.equal(out, dense) for out in outputs)
    else:
        assert found == silent_below
        torch.testing.assert_close(outputs[1], dense, atol=1e-6, rtol=1e-6)


def test_no_sparse_path_when_gated_unknown_training_grad_or_few_units(monkeypatch):
    monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 16)
    x = torch.randn(80, 4)
    for change in ("gated", "unknown", "training", "grad", "few"):
        key, value, _ = sparse_pair()
        if change == "gated":
            key.gated = True
        elif change == "unknown":
            key.gated = None
        elif change == "training":
            key.train()
        elif change == "few":
            monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 49)
        key.bank("default").frozen_weight.requires_grad_(change == "grad")
        with torch.set_grad_enabled(change == "grad"):
            for _ in range(2):
                hidden = key(x)
                assert hidden.shape == (80, 64), change  # 16 + 48 units: dense
                value(torch.nn.functional.gelu(hidden))
        assert "_sparse_state" not in key.__dict__, change
        monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 16)


def test_sparse_plan_is_checked_and_never_reused(monkeypatch):
    monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 16)
    key, value, _ = sparse_pair()
    x = torch.randn(80, 4)
    with torch.no_grad():
        ffn(key, value, x)  # probe pass
        key(x)  # a plan that no value layer consumes ...
        hidden = key(x[:70])  # ... is dropped by the next pass of the key layer
        assert layer_module._plans()["block"].rows == (70,)
        value.bank("default").add(torch.randn(1, 4), None, requires_grad=False)  # no longer matches its key layer
        with pytest.raises(RuntimeError, match="other patches than its key layer"):
            value(torch.nn.functional.gelu(hidden))


@pytest.mark.parametrize("screen", ["fp32", "bf16"])
def test_screen_never_drops_a_unit_that_fires(screen):
    """Units whose largest pre-activation sits within +-0.5 of the threshold (of ~40 for |x| |k|): every one that
    exceeds it in float32 is kept by the screen, and the screen still drops the clearly silent ones."""
    torch.manual_seed(0)
    key = MPNLayer(nn.Linear(64, 16), "key", "block", "default", sharpness=10.0, gated=False).eval()
    n = 3000
    weight = torch.randn(n, 64) * 0.5
    x = torch.randn(2, 100, 64)
    top = (x.reshape(-1, 64) @ weight.T).amax(dim=0)
    offset = torch.empty(n).uniform_(-0.5, 0.5)
    offset[:1000] = -2.0 - torch.rand(1000)  # clearly silent: at least 2 (effective 20) below the threshold
    bias = -top - 0.6 + offset  # natural scale; the threshold is -0.6 (effective -6)
    key.bank("default").add(weight, bias, requires_grad=False)
    key.bank("default").freeze()
    with torch.no_grad():
        fused, fused_bias = key._fused_weights([key.bank("default")], x)
    patch_bias = fused_bias[16 : 16 + n]
    exact = (x.reshape(-1, 64) @ fused[16 : 16 + n].T + patch_bias).amax(dim=0) > -6.0
    MPNLayer.SCREEN = screen
    try:
        kept = key._screen(x, fused, patch_bias, -6.0)
    finally:
        MPNLayer.SCREEN = "auto"
    kept_mask = torch.zeros(n, dtype=torch.bool)
    kept_mask[kept] = True
    assert exact.sum() > 500 and not (exact & ~kept_mask).any()  # nothing that fires is dropped
    assert not kept_mask[:1000].any()  # and the screen is selective


def test_dense_product_when_most_units_fire(monkeypatch):
    monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 16)
    key, value, _ = sparse_pair(silent=0)  # every unit can fire
    x = torch.randn(80, 4)
    with torch.no_grad():
        monkeypatch.setattr(MPNLayer, "SPARSE", False)
        dense = ffn(key, value, x)
        monkeypatch.setattr(MPNLayer, "SPARSE", True)
        outputs = [ffn(key, value, x) for _ in range(3)]  # probe, a screen that keeps too much, a dense pass
    state = key.__dict__["_sparse_state"]
    assert state["kept"] > 24 and state["dense_passes"] == 30
    assert all(torch.equal(out, dense) for out in outputs)


def test_sparse_key_with_a_value_layer_that_cannot_fuse(monkeypatch):
    """A hook on the value projection (as accelerate's offloading adds) stops its fused weight, not the plan."""
    monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 16)
    key, value, _ = sparse_pair()
    x = torch.randn(80, 4)
    with torch.no_grad():
        monkeypatch.setattr(MPNLayer, "SPARSE", False)
        dense = ffn(key, value, x)
        monkeypatch.setattr(MPNLayer, "SPARSE", True)
        value.base_layer.register_forward_hook(lambda _module, _args, out: out)
        outputs = [ffn(key, value, x) for _ in range(2)]
    assert key.__dict__["_sparse_state"]["silent_below"] == -6.0 and key.__dict__["_sparse_state"]["kept"] == 16
    for out in outputs:
        torch.testing.assert_close(out, dense, atol=1e-6, rtol=1e-6)
