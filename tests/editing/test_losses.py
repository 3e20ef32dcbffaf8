"""EditConfig validation and the patch losses, checked against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from peft_mpn.editing.losses import EditConfig, LossParts, activation_loss, edit_loss, memory_loss, patch_loss


# ---------------------------------------------------------------------- EditConfig
@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", 0.0),
        ("lr", -1e-3),
        ("max_steps", 0),
        ("edit_repeat", 0),
        ("weight_decay", -0.1),
        ("max_grad_norm", -1.0),
        ("activation_weight", -1.0),
        ("memory_weight", -1.0),
        ("gap_margin", -0.5),
        ("stop_rule", "never"),
        ("position", "mean"),
        ("memory_batch_size", 0),
        ("patience", -1),
        ("patience", 2.5),
        ("max_steps", 2.5),
        ("edit_repeat", 1.5),
        ("memory_top_k", 0),
        ("memory_top_k", -1),
        ("activation_top_k", 0),
        ("seed", "x"),
        ("lr", float("nan")),
        ("lr", "0.01"),
        ("value_lr_scale", -1.0),
        ("value_init_std", -1.0),
        ("memory_threshold", float("inf")),
    ],
)
def test_edit_config_rejects_bad_fields_by_name(field, value):
    with pytest.raises(ValueError, match=rf"EditConfig\.{field}"):
        EditConfig(**{field: value})


def test_edit_config_accepts_edge_values_and_round_trips_to_dict():
    config = EditConfig(weight_decay=0.0, memory_weight=0.0, memory_batch_size=None, stop_rule="memory_plateau")
    data = config.to_dict()
    assert data["stop_rule"] == "memory_plateau" and data["memory_batch_size"] is None
    assert EditConfig(**data) == config
    assert set(data) == set(EditConfig.__dataclass_fields__)


# ---------------------------------------------------------------------- edit loss
def _ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(x) for x in logits))


def test_edit_loss_is_mean_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 1])
    expected = (_ce([2.0, 0.0], 0) + _ce([0.0, 1.0], 1) + _ce([0.5, 0.5], 1)) / 3
    assert edit_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_edit_loss_weights_equal_repeated_rows():
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1]])
    labels = torch.tensor([1, 0])
    weighted = edit_loss(logits, labels, torch.tensor([8.0, 1.0]))
    repeated = edit_loss(torch.cat([logits[:1].repeat(8, 1), logits[1:]]), torch.tensor([1] * 8 + [0]))
    assert weighted.item() == pytest.approx(repeated.item(), abs=1e-6)
    by_hand = (8 * _ce([2.0, -1.0], 1) + _ce([0.3, 0.1], 0)) / 9
    assert weighted.item() == pytest.approx(by_hand, abs=1e-6)


# ---------------------------------------------------------------------- activation loss
def test_activation_loss_is_mean_exp_minus_a():
    acts = torch.tensor([[1.0], [-0.5], [2.0]])
    expected = (math.exp(-1.0) + math.exp(0.5) + math.exp(-2.0)) / 3
    assert activation_loss(acts).item() == pytest.approx(expected, abs=1e-6)


def test_activation_loss_top_k_uses_the_smallest_values():
    acts = torch.tensor([[1.0], [-0.5], [2.0]])
    expected = (math.exp(0.5) + math.exp(-1.0)) / 2  # the two least active: -0.5 and 1.0
    assert activation_loss(acts, top_k=2).item() == pytest.approx(expected, abs=1e-6)
    # k >= numel: every value counts
    assert activation_loss(acts, top_k=3).item() == pytest.approx(activation_loss(acts).item(), abs=1e-7)
    assert activation_loss(acts, top_k=10).item() == pytest.approx(activation_loss(acts).item(), abs=1e-7)


def test_activation_loss_weights_equal_repeated_rows():
    acts = torch.tensor([[0.4], [-1.2]])
    weighted = activation_loss(acts, weights=torch.tensor([8.0, 1.0]))
    repeated = activation_loss(torch.cat([acts[:1].repeat(8, 1), acts[1:]]))
    assert weighted.item() == pytest.approx(repeated.item(), abs=1e-6)
    assert weighted.item() == pytest.approx((8 * math.exp(-0.4) + math.exp(1.2)) / 9, abs=1e-6)


def test_activation_loss_weights_with_several_neurons_per_row():
    acts = torch.tensor([[0.0, 1.0], [2.0, -1.0]])  # rows of two neurons: each row averages its neurons
    weighted = activation_loss(acts, weights=torch.tensor([8.0, 1.0]))
    repeated = activation_loss(torch.cat([acts[:1].repeat(8, 1), acts[1:]]))
    assert weighted.item() == pytest.approx(repeated.item(), abs=1e-6)


# ---------------------------------------------------------------------- memory loss
def test_memory_loss_hinge_terms_by_hand():
    memory = torch.tensor([-4.0, -2.0, 0.5, -3.5])
    edit = torch.tensor([1.0, 2.0])
    # below threshold -3: relu(m + 3) = [0, 1, 3.5, 0] -> mean 1.125
    below = (0 + 1 + 3.5 + 0) / 4
    # top-2 memory values 0.5 and -2, min(edit) = 1, margin 3: relu(0.5 - 1 + 3) = 2.5, relu(-2 - 1 + 3) = 0
    gap = (2.5 + 0.0) / 2
    loss = memory_loss(memory, edit, threshold=-3.0, gap_margin=3.0, top_k=2)
    assert loss.item() == pytest.approx(below + gap, abs=1e-6)


def test_memory_loss_top_k_larger_than_memory_and_silent_memory():
    memory = torch.tensor([[-5.0], [-4.0]])
    edit = torch.tensor([[3.0]])
    # every memory value is below -3 and at least 3 below the edit: no loss
    assert memory_loss(memory, edit, threshold=-3.0, gap_margin=3.0, top_k=5).item() == 0.0
    # with a bigger margin, both memory values (k capped at 2) violate it: relu(-5 - 3 + 10), relu(-4 - 3 + 10)
    loss = memory_loss(memory, edit, threshold=-3.0, gap_margin=10.0, top_k=5)
    assert loss.item() == pytest.approx((2.0 + 3.0) / 2, abs=1e-6)


def test_memory_loss_of_empty_memory_is_zero():
    loss = memory_loss(torch.zeros(0), torch.tensor([1.0]))
    assert loss.shape == () and loss.item() == 0.0


# ---------------------------------------------------------------------- patch loss
def test_patch_loss_combines_the_parts_with_their_weights():
    config = EditConfig(
        activation_weight=2.0, memory_weight=0.5, memory_threshold=-3.0, gap_margin=3.0, memory_top_k=2
    )
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([1, 1])
    edit_acts = torch.tensor([[0.5], [1.5]])
    memory_acts = torch.tensor([[-1.0], [-4.0], [0.0]])
    parts = patch_loss(logits, labels, edit_acts, memory_acts, config)
    e = (_ce([1.0, 0.0], 1) + _ce([0.0, 2.0], 1)) / 2
    a = (math.exp(-0.5) + math.exp(-1.5)) / 2
    below = (2.0 + 0.0 + 3.0) / 3
    gap = (max(0.0, 0.0 - 0.5 + 3.0) + max(0.0, -1.0 - 0.5 + 3.0)) / 2  # top-2 memory: 0, -1; min edit 0.5
    m = below + gap
    assert parts.edit.item() == pytest.approx(e, abs=1e-6)
    assert parts.activation.item() == pytest.approx(a, abs=1e-6)
    assert parts.memory.item() == pytest.approx(m, abs=1e-6)
    assert parts.total.item() == pytest.approx(e + 2.0 * a + 0.5 * m, abs=1e-6)


def test_patch_loss_weights_and_act_weights():
    config = EditConfig()
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1])
    acts = torch.tensor([[0.2], [0.9]])
    memory = torch.tensor([[-4.0]])
    weights = torch.tensor([8.0, 1.0])
    weighted = patch_loss(logits, labels, acts, memory, config, weights)
    rows = torch.tensor([0] * 8 + [1])
    repeated = patch_loss(logits[rows], labels[rows], acts[rows], memory, config)
    for name, value in weighted.as_floats().items():
        assert value == pytest.approx(repeated.as_floats()[name], abs=1e-6), name
    # act_weights overrides weights for the activation term only
    other = patch_loss(logits, labels, acts, memory, config, weights, act_weights=torch.tensor([1.0, 1.0]))
    assert other.edit.item() == pytest.approx(weighted.edit.item(), abs=1e-7)
    assert other.activation.item() == pytest.approx(activation_loss(acts).item(), abs=1e-7)


def test_patch_loss_without_patch_is_the_edit_loss_alone():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    labels = torch.tensor([1, 0])
    empty = torch.zeros(0)
    parts = patch_loss(logits, labels, empty, empty, EditConfig(), use_patch=False)
    assert parts.total.item() == pytest.approx(edit_loss(logits, labels).item(), abs=1e-7)
    assert parts.edit.item() == parts.total.item()
    assert parts.activation.item() == 0.0 and parts.memory.item() == 0.0
    parts.total.backward()
    assert logits.grad is not None


def test_loss_parts_as_floats():
    parts = LossParts(
        total=torch.tensor(3.5, requires_grad=True),
        edit=torch.tensor(1.0),
        activation=torch.tensor(0.5),
        memory=torch.tensor(2.0),
    )
    floats = parts.as_floats()
    assert floats == {"total": 3.5, "edit": 1.0, "activation": 0.5, "memory": 2.0}
    assert all(type(v) is float for v in floats.values())
