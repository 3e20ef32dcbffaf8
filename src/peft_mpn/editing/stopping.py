"""The stop rule of an edit: what one step saw (`StepStats`) and when the edit is done (`PatchEarlyStopping`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from .losses import EditConfig, LossParts


@dataclass
class StepStats:
    """What one training step saw, for early stopping and logging.

    Attributes:
        edit_correct: Every edit example is predicted as its label.
        activation_edit: Smallest pre-activation of the new patch on the edit examples (``nan`` without a patch).
        activation_memory: Largest pre-activation on the memory examples (``nan`` without memory or patch).
        losses: The loss parts as floats.
    """

    edit_correct: bool
    activation_edit: float
    activation_memory: float
    losses: dict[str, float]


class PatchEarlyStopping(TrainerCallback):
    """Stops an edit once it is done (see `EditConfig.stop_rule`).

    ``"memory_plateau"`` (Transformer-Patcher): every edit example is right and the memory loss has not improved (by
    0.1%) for ``patience`` steps. ``"activation_gap"``: every edit example is right and either the patch already
    separates them from the memory (pre-activation > 0 on every edit example, and below ``memory_threshold`` on
    every memory example, where GELU-like activations are ~0, or a memory loss at its floor), or the memory loss
    has reached its plateau as above. The floor is a memory loss within the plateau's resolution (``1e-4``) of 0,
    where no later step can improve it by as much as the plateau counts. With a large memory the loss (a mean over
    every memory input) gets there while a few inputs sit just above the threshold; waiting ``patience`` more steps
    then mostly grows the key, which raises them again.
    """

    resolution = 1e-4  # smallest memory-loss improvement that resets the plateau count

    def __init__(self, config: EditConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget the previous edit."""
        self.best_memory = math.inf
        self.stale = 0
        self.last: StepStats | None = None

    def observe(self, stats: StepStats) -> bool:
        """Record a step; returns whether the edit is done.

        The plateau count runs only while the edit is right: steps with a wrong edit example never count.
        """
        self.last = stats
        memory = stats.losses.get("memory", 0.0)
        if not stats.edit_correct:
            self.best_memory, self.stale = math.inf, 0
        elif self.best_memory == math.inf or memory < self.best_memory - max(
            self.resolution, 1e-3 * abs(self.best_memory)
        ):
            self.best_memory, self.stale = memory, 0
        else:
            self.stale += 1
        return self.done

    @property
    def done(self) -> bool:
        """Whether the last observed step satisfies the stop rule."""
        stats = self.last
        if stats is None or not stats.edit_correct:
            return False
        plateau = self.stale >= self.config.patience
        if self.config.stop_rule == "memory_plateau":
            return plateau
        edit_on = math.isnan(stats.activation_edit) or stats.activation_edit > 0
        no_memory = math.isnan(stats.activation_memory)
        memory_off = no_memory or stats.activation_memory < self.config.memory_threshold
        floor = not no_memory and stats.losses.get("memory", math.inf) <= self.resolution
        return (edit_on and (memory_off or floor)) or plateau

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.done:
            control.should_training_stop = True
        return control


def stats_of(parts: LossParts, edit_logits: torch.Tensor, labels: torch.Tensor, edit_acts, memory_acts) -> StepStats:
    """Summarise a step."""
    correct = bool((edit_logits.detach().argmax(-1) == labels).all())
    a_edit = float(edit_acts.detach().min()) if edit_acts is not None and edit_acts.numel() else float("nan")
    a_mem = float(memory_acts.detach().max()) if memory_acts is not None and memory_acts.numel() else float("nan")
    return StepStats(correct, a_edit, a_mem, parts.as_floats())
