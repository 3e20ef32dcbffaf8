"""`Editor`: the editing loop every task shares: add a patch, train it until the stop rule, freeze it, record it.

A task's editor (``peft_mpn.tasks.classification.editor.MPNEditor``,
``peft_mpn.tasks.generation.editor.CausalLMEditor``) says how a record becomes training rows, how a step's loss is
computed on them (fast path or full model) and how success is checked. This class owns the rest: the method and its
strategy (patch or baseline), the collator and its memory, the stop rule, the optimisation loop, and, through
`EditStream`, resumable streams of edits.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..utils.checks import non_finite
from .baselines import Strategy
from .collator import EditCollator
from .losses import EditConfig, LossParts, NonFiniteLoss, check_finite_loss
from .optim import clip_grad_norm, edit_optimizer
from .stopping import PatchEarlyStopping, StepStats
from .stream import EditStream


@dataclass
class EditResult:
    """The outcome of one edit.

    Attributes:
        id: The record id.
        success: The English edit example is predicted as its label right after the edit.
        skipped: The model already got it right, so nothing was edited.
        steps: Training steps taken.
        seconds: Wall time of the edit (caching, training and the success check).
        losses: Loss parts of the last step.
        activation_edit: Smallest pre-activation of the new patch on the edit examples at the last step.
        activation_memory: Largest pre-activation on the memory at the last step.
        correct: Language -> the edit's input in that language is predicted right after the edit.
        method: The editing method.
    """

    id: str
    success: bool
    skipped: bool = False
    steps: int = 0
    seconds: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    activation_edit: float | None = None
    activation_memory: float | None = None
    correct: dict[str, bool] = field(default_factory=dict)
    method: str = "mpn"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        data = asdict(self)
        for key in ("activation_edit", "activation_memory"):
            if data[key] is not None and data[key] != data[key]:
                data[key] = None
        return data


StepFunction = Callable[[int], tuple[LossParts, StepStats]]
logger = logging.getLogger(__name__)


def check_finite_base(strategy: Strategy) -> None:
    """``ValueError`` if the transformer layer an edit trains in holds NaN or infinite weights.

    A patch trained on top of such a layer is NaN too, while a check of the outputs could still pass.
    """
    model = strategy.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        layer = base.get_submodule(strategy.block) if strategy.block else base
    except AttributeError:
        return
    tensors = [*layer.named_parameters(), *layer.named_buffers()]
    bad = non_finite((f"{strategy.block}.{name}" if strategy.block else name, t) for name, t in tensors)
    if bad:
        raise ValueError(
            f"the base model's edited layer holds NaN or infinite weights ({', '.join(bad)}); edits on it would be "
            "NaN. Reload or repair the base model."
        )


class Editor(EditStream):
    """The shared editing loop; subclasses are the tasks.

    Attributes set by :meth:`_setup` (every task has them): ``method``, ``config`` (`EditConfig`), ``strategy``
    (how a method adds and freezes what it trains), ``model``, ``tokenizer``, ``collator`` (the task's
    `EditCollator`, which holds the memory), ``languages`` (the training languages, English first), ``progress``
    and ``stopper`` (the stop rule).
    """

    method: str
    config: EditConfig
    strategy: Strategy
    model: nn.Module
    tokenizer: Any
    collator: EditCollator
    languages: list[str]
    progress: bool
    stopper: PatchEarlyStopping

    def _setup(
        self,
        strategy: Strategy,
        tokenizer: Any,
        collator: EditCollator,
        *,
        method: str,
        config: EditConfig,
        progress: bool,
    ) -> None:
        """Set the attributes every task shares (called by the task's constructor)."""
        self.method = method
        self.config = config
        self.strategy = strategy
        self.model = strategy.model
        self.tokenizer = tokenizer
        self.progress = progress
        self.collator = collator
        self.languages = collator.languages
        self.stopper = PatchEarlyStopping(config)
        check_finite_base(strategy)

    # ------------------------------------------------------------------ memory
    def add_to_memory(self, texts: Sequence[str]) -> None:
        """Add texts (e.g. an edit's inputs) to the memory that later patches must stay silent on."""
        if isinstance(texts, str):
            raise TypeError("add_to_memory takes a list of texts, not one string.")
        self.collator.memory.extend(texts)

    @property
    def memory_size(self) -> int:
        """Number of memory texts."""
        return len(self.collator.memory)

    # ------------------------------------------------------------------ one edit
    def edit(self, record: Any) -> EditResult:
        """Edit the model so that ``record`` holds; the new patch is frozen afterwards.

        The record is checked and parsed (a dict like one JSONL line is accepted), the stop rule is reset, and the
        task's :meth:`_edit` adds, trains and freezes the patch.

        If the loss or the trained parameters become NaN or infinite, the edit stops there, what it trained is rolled
        back (the new patch is removed; FT-L and LoRA weights are restored) and the result has ``success=False``.

        Raises:
            ValueError: If the record is invalid or lacks a training language.
            TypeError: If ``record`` is not a record of this task.
        """
        record = self._record(record)
        start = time.perf_counter()
        self.model.eval()
        self.stopper.reset()
        try:
            result = self._edit(record, start)
        except NonFiniteLoss as exc:
            self.strategy.discard()
            self.model.eval()
            logger.warning("edit %r failed and was rolled back: %s", record.id, exc)
            seconds = time.perf_counter() - start
            fields = {"steps": exc.step, "seconds": seconds, "losses": exc.losses, "method": self.method}
            return self.result_class(id=record.id, success=False, **fields)
        if not result.skipped:
            self.strategy.note_edit(result, self.languages)  # model.edits() lists it; remove_edit(id) undoes it
        return result

    @abstractmethod
    def _edit(self, record: Any, start: float) -> EditResult:
        """Add, train and freeze the patch of a checked record; ``start`` is the edit's ``perf_counter`` start."""

    def _optimise(self, params: list[nn.Parameter], step: StepFunction) -> tuple[int, StepStats | None]:
        """Train ``params`` with ``step(i) -> (loss parts, stats)`` until the stop rule or ``max_steps``.

        Values (``strategy.value_parameters()``) train at ``lr * value_lr_scale``; gradients are clipped to
        ``max_grad_norm``. The learning rate, weight decay and step cap are the strategy's (``optim_settings``:
        ``EditConfig``'s for the patches, ``BaselineConfig``'s for FT-L and LoRA).

        Returns:
            The number of optimiser steps taken and the stats of the last step computed.

        Raises:
            NonFiniteLoss: A step's loss, or the trained parameters at the end, are NaN or infinite.
        """
        values = self.strategy.value_parameters()
        keys = [p for p in params if all(p is not v for v in values)]
        lr, weight_decay, max_steps = self.strategy.optim_settings(self.config)  # baselines: their BaselineConfig
        optimizer = edit_optimizer(keys, lr, weight_decay, values, self.config.value_lr_scale)
        stats: StepStats | None = None
        steps = 0
        for i in range(max_steps):
            parts, stats = step(i)
            check_finite_loss(parts, i)
            if self.stopper.observe(stats):
                break
            optimizer.zero_grad()
            parts.total.backward()
            clip_grad_norm(params, self.config.max_grad_norm)
            optimizer.step()
            self.strategy.after_step()
            steps = i + 1
        if non_finite(enumerate(params), limit=1):  # the last step's update, which no loss has seen yet
            raise NonFiniteLoss(steps, stats.losses if stats else {}, "parameters")
        return steps, stats

    @staticmethod
    def _stats_fields(stats: StepStats | None) -> dict[str, Any]:
        """The `EditResult` fields that come from the last step's stats."""
        if stats is None:
            return {"losses": {}, "activation_edit": None, "activation_memory": None}
        return {
            "losses": stats.losses,
            "activation_edit": stats.activation_edit,
            "activation_memory": stats.activation_memory,
        }


__all__ = ["EditResult", "Editor", "NonFiniteLoss", "StepFunction", "check_finite_base", "check_finite_loss"]
