"""PatchBank and MPNLayer: growth, freezing, resizing, exact merge on Linear and Conv1D."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_mpn.layer import (
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
