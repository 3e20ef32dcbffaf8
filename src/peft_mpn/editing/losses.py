"""Transformer-Patcher's patch losses, as small composable functions, and the knobs of an edit.

The loss of one training step is

    edit loss + activation_weight * activation loss + memory_weight * memory loss

- the **edit loss** is the task loss on the edit examples (MPN: the English example and its translations);
- the **activation loss** pushes the new neuron's pre-activation on the edit examples above 0;
- the **memory loss** pushes its pre-activation on unrelated (memory) inputs below ``memory_threshold`` and keeps
  the edit examples above the memory by ``gap_margin``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..utils.checks import is_int, is_real


@dataclass
class EditConfig:
    """Everything that shapes one edit. Defaults follow Transformer-Patcher (FEVER setting) unless noted.

    Args:
        lr: Adam learning rate of the patch (T-Patcher: 1e-2).
        weight_decay: AdamW weight decay on patch weights, not biases (T-Patcher: 0.01).
        max_grad_norm: Gradient clipping (T-Patcher: 5.0).
        max_steps: Step cap per edit. T-Patcher allows 2000; the fast path makes that cheap, but most edits stop
            within a few dozen steps with ``stop_rule="activation_gap"``.
        activation_weight: Weight of the activation loss (T-Patcher: 1.0).
        memory_weight: Weight of the memory loss (T-Patcher: 5 for FEVER, 10 for zsRE).
        memory_threshold: Memory pre-activations are pushed below this (T-Patcher: -3).
        gap_margin: Edit pre-activations are kept this far above the memory's (T-Patcher: 3).
        activation_top_k: The activation loss averages ``exp(-a)`` over the k smallest edit pre-activations
            (``None``: all of them). With one edit example per language, all of them is the natural choice.
        memory_top_k: The gap term uses the k largest memory pre-activations (T-Patcher uses the top ones).
        edit_repeat: How often the English edit example is repeated in a batch (T-Patcher: 8). It weights English
            against the translations in the edit loss.
        memory_batch_size: Memory examples per step (``None``: the whole memory, which the fast path can afford).
        value_init_std: Norm scale of the new (random) value vector: its std is ``value_init_std / sqrt(width)``.
        value_lr_scale: The value vector trains at ``lr * value_lr_scale``. Transformer-Patcher multiplies the value
            by a scale that starts at 10; a larger learning rate for the value plays that part.
        stop_rule: Both rules wait until the edit is right in every training language. ``"memory_plateau"``
            (T-Patcher) then stops once the memory loss has not improved by 0.1% for ``patience`` steps;
            ``"activation_gap"`` stops as soon as the edit pre-activations are above 0 and the memory's below
            ``memory_threshold`` (where the activation is ~0), or at that plateau, or once the memory loss is at
            its floor (<= 1e-4, the plateau's resolution), whichever comes first.
        patience: Steps without memory-loss improvement before the plateau stops an edit (both stop rules).
        position: Where the patch is read for a classifier: ``"cls"`` (first token, T-Patcher) or ``"all"`` (every
            non-padding token, for mean-pooled classifiers).
        seed: Seeds the value initialisation and memory sampling.
    """

    lr: float = 1e-2
    weight_decay: float = 0.01
    max_grad_norm: float = 5.0
    max_steps: int = 1000
    activation_weight: float = 1.0
    memory_weight: float = 5.0
    memory_threshold: float = -3.0
    gap_margin: float = 3.0
    activation_top_k: int | None = None
    memory_top_k: int = 5
    edit_repeat: int = 8
    memory_batch_size: int | None = None
    value_init_std: float = 1.0
    value_lr_scale: float = 10.0
    stop_rule: Literal["activation_gap", "memory_plateau"] = "activation_gap"
    patience: int = 20
    position: Literal["cls", "all"] = "cls"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "edit_repeat", "memory_top_k"):
            _check_int(name, getattr(self, name), 1)
        _check_int("patience", self.patience, 0, "steps")
        _check_int("seed", self.seed, None)
        if self.activation_top_k is not None:
            _check_int("activation_top_k", self.activation_top_k, 1, "or None for all")
        for name in ("lr", "value_lr_scale"):
            if _number(name, getattr(self, name)) <= 0:
                raise ValueError(f"EditConfig.{name} must be > 0, got {getattr(self, name)!r}.")
        for name in (
            "weight_decay",
            "max_grad_norm",
            "activation_weight",
            "memory_weight",
            "gap_margin",
            "value_init_std",
        ):
            if _number(name, getattr(self, name)) < 0:
                raise ValueError(f"EditConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
        _number("memory_threshold", self.memory_threshold)
        if self.stop_rule not in ("activation_gap", "memory_plateau"):
            raise ValueError(
                f"EditConfig.stop_rule must be 'activation_gap' or 'memory_plateau', not {self.stop_rule!r}."
            )
        if self.position not in ("cls", "all"):
            raise ValueError(f"EditConfig.position must be 'cls' or 'all', not {self.position!r}.")
        if self.memory_batch_size is not None:
            _check_int("memory_batch_size", self.memory_batch_size, 1, "memory examples per step, or None for all")

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict."""
        return asdict(self)


def _check_int(name: str, value: object, least: int | None, unit: str = "") -> None:
    """``ValueError`` naming ``EditConfig.<name>`` unless ``value`` is an int (not a bool) >= ``least``."""
    if not is_int(value, least):
        bound = "" if least is None else f" >= {least}"
        raise ValueError(f"EditConfig.{name} must be an int{bound}{f' ({unit})' if unit else ''}, got {value!r}.")


def _number(name: str, value: object) -> float:
    """``value`` as a float; ``ValueError`` naming ``EditConfig.<name>`` unless it is a finite real number."""
    if not is_real(value):
        raise ValueError(f"EditConfig.{name} must be a finite number, got {value!r}.")
    return float(value)


def _mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum()


def edit_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the edit examples (the task loss).

    ``weights`` (one per row) stand for repeated rows: row i counts ``weights[i]`` times.
    """
    return _mean(F.cross_entropy(logits, labels, reduction="none"), weights)


def activation_loss(
    edit_acts: torch.Tensor, top_k: int | None = None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Push the patch's pre-activations on the edit examples up: mean of ``exp(-a)``.

    Args:
        edit_acts: Pre-activations on the edit examples, ``(rows, ...)``.
        top_k: Average over the k smallest (least active) values only (ignores ``weights``).
        weights: One weight per row, standing for repeated rows.
    """
    if top_k is not None and top_k < edit_acts.numel():
        acts = (-edit_acts.reshape(-1)).topk(top_k).values.neg()
        return torch.exp(-acts).mean()
    if weights is not None:
        per_row = torch.exp(-edit_acts).reshape(edit_acts.shape[0], -1).mean(dim=1)
        return _mean(per_row, weights)
    return torch.exp(-edit_acts).mean()


def memory_loss(
    memory_acts: torch.Tensor,
    edit_acts: torch.Tensor,
    threshold: float = -3.0,
    gap_margin: float = 3.0,
    top_k: int = 5,
) -> torch.Tensor:
    """Keep the patch silent on memory inputs.

    Two hinge terms: memory pre-activations below ``threshold``, and the k largest memory pre-activations at least
    ``gap_margin`` below the smallest edit pre-activation.
    """
    memory = memory_acts.reshape(-1)
    if memory.numel() == 0:
        return memory_acts.new_zeros(())
    below = F.relu(memory - threshold).mean()
    k = min(top_k, memory.numel())
    top = memory.topk(k).values
    gap = F.relu(top - edit_acts.reshape(-1).min() + gap_margin).mean()
    return below + gap


@dataclass
class LossParts:
    """The parts of one step's loss, for logging."""

    total: torch.Tensor
    edit: torch.Tensor
    activation: torch.Tensor
    memory: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        """The parts as Python floats."""
        return {name: float(getattr(self, name).detach()) for name in ("total", "edit", "activation", "memory")}


def patch_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    edit_acts: torch.Tensor,
    memory_acts: torch.Tensor,
    config: EditConfig,
    weights: torch.Tensor | None = None,
    act_weights: torch.Tensor | None = None,
    use_patch: bool = True,
) -> LossParts:
    """The combined loss of one step from its pieces.

    Args:
        logits: ``(rows, classes)`` logits of the edit examples.
        labels: ``(rows,)`` target labels.
        edit_acts: Pre-activations of the new patch on the edit examples.
        memory_acts: Pre-activations of the new patch on the memory examples.
        config: Weights and margins.
        weights: One weight per edit row, standing for repeated rows (the fast path's compact batches).
        act_weights: One weight per row of ``edit_acts`` (defaults to ``weights``; differs when every token is read).
        use_patch: ``False`` for baselines without a patch: the edit loss alone.
    """
    e = edit_loss(logits, labels, weights)
    if not use_patch:
        zero = e.new_zeros(())
        return LossParts(e, e, zero, zero)
    a = activation_loss(edit_acts, config.activation_top_k, weights if act_weights is None else act_weights)
    m = memory_loss(memory_acts, edit_acts, config.memory_threshold, config.gap_margin, config.memory_top_k)
    return LossParts(e + config.activation_weight * a + config.memory_weight * m, e, a, m)


class NonFiniteLoss(ArithmeticError):
    """An edit's loss (or the parameters it trains) became NaN or infinite; the edit is rolled back.

    Attributes:
        step: The step at which it was seen.
        losses: The loss parts of that step (non-finite ones as ``None``).
    """

    def __init__(self, step: int, losses: dict[str, float], what: str = "loss") -> None:
        self.step = step
        self.losses = {k: (v if math.isfinite(v) else None) for k, v in losses.items()}
        super().__init__(
            f"the edit's {what} became non-finite at step {step} ({losses}); lower EditConfig.lr or check the base "
            "model's weights."
        )


def check_finite_loss(parts: LossParts, step: int) -> None:
    """Raise :class:`NonFiniteLoss` if a step's total loss is NaN or infinite."""
    if not bool(torch.isfinite(parts.total.detach()).all()):
        raise NonFiniteLoss(step, parts.as_floats())


def read_positions(acts: torch.Tensor, mask: torch.Tensor, position: str) -> torch.Tensor:
    """Pre-activations where the patch is read: ``(rows, n)`` at [CLS], ``(tokens, n)`` for all tokens."""
    if position == "cls":
        return acts[:, 0]
    return acts[mask.bool()]
