"""`MPNTrainer`: a `transformers.Trainer` that trains the newest patch of an MPN model on one edit.

This is the full-model path: every step runs the whole model on the collator's batch (edit examples and memory
examples). `MPNEditor` uses it for ``fast=False``; the fast path (`peft_mpn.fastpath`) gives the same losses on
cached inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from .data.records import EditRecord
from .layer import MPNLayer
from .losses import EditConfig, LossParts, patch_loss


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
    separates them from the memory (pre-activation > 0 on every edit example, below ``memory_threshold`` on every
    memory example, where GELU-like activations are ~0), or the memory loss has reached its plateau as above.
    """

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

        The plateau count runs only while the edit is right, so an edit is never stopped at its first right step.
        """
        self.last = stats
        memory = stats.losses.get("memory", 0.0)
        if not stats.edit_correct:
            self.best_memory, self.stale = math.inf, 0
        elif self.best_memory == math.inf or memory < self.best_memory - max(1e-4, 1e-3 * abs(self.best_memory)):
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
        memory_off = math.isnan(stats.activation_memory) or stats.activation_memory < self.config.memory_threshold
        return (edit_on and memory_off) or plateau

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.done:
            control.should_training_stop = True
        return control


def newest_patch(model: torch.nn.Module) -> tuple[MPNLayer, int] | None:
    """The key layer of the (single) patched block and the size of its newest patch, or None for non-MPN models."""
    layers = [m for m in model.modules() if isinstance(m, MPNLayer) and m.role == "key"]
    if not layers:
        return None
    layer = layers[0]
    adapter = layer.active_adapters[0]
    bank = layer.bank(adapter)
    if bank.num_patches == 0 or int(bank.num_frozen) == bank.num_patches:
        return None
    return layer, int(bank.sizes[-1])


def read_positions(acts: torch.Tensor, mask: torch.Tensor, position: str) -> torch.Tensor:
    """Pre-activations where the patch is read: ``(rows, n)`` at [CLS], ``(tokens, n)`` for all tokens."""
    if position == "cls":
        return acts[:, 0]
    return acts[mask.bool()]


def stats_of(parts: LossParts, edit_logits: torch.Tensor, labels: torch.Tensor, edit_acts, memory_acts) -> StepStats:
    """Summarise a step."""
    correct = bool((edit_logits.detach().argmax(-1) == labels).all())
    a_edit = float(edit_acts.detach().min()) if edit_acts is not None and edit_acts.numel() else float("nan")
    a_mem = float(memory_acts.detach().max()) if memory_acts is not None and memory_acts.numel() else float("nan")
    return StepStats(correct, a_edit, a_mem, parts.as_floats())


def full_model_step(
    model: torch.nn.Module, inputs: dict[str, Any], config: EditConfig
) -> tuple[LossParts, StepStats, Any]:
    """Loss of one collated batch through the full model (the reference path)."""
    edit_mask = inputs["edit_mask"]
    labels = inputs["labels"][edit_mask]
    model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    patch = newest_patch(model)
    if patch is None:
        outputs = model(**model_inputs)
        edit_logits = outputs.logits[edit_mask]
        empty = edit_logits.new_zeros(0)
        parts = patch_loss(edit_logits, labels, empty, empty, config, use_patch=False)
        return parts, stats_of(parts, edit_logits, labels, None, None), outputs
    layer, n_new = patch
    captured: dict[str, torch.Tensor] = {}
    layer.capture_to = (layer.active_adapters[0], captured)
    try:
        outputs = model(**model_inputs)
    finally:
        layer.capture_to = None
    acts = captured[layer.block][..., -n_new:]
    mask = inputs["attention_mask"]
    edit_acts = read_positions(acts[edit_mask], mask[edit_mask], config.position)
    memory_acts = read_positions(acts[~edit_mask], mask[~edit_mask], config.position)
    edit_logits = outputs.logits[edit_mask]
    parts = patch_loss(edit_logits, labels, edit_acts, memory_acts, config)
    return parts, stats_of(parts, edit_logits, labels, edit_acts, memory_acts), outputs


def edit_training_args(output_dir: str, config: EditConfig, **overrides: Any) -> TrainingArguments:
    """`TrainingArguments` that match an `EditConfig`: one edit batch per step, constant lr, no saving."""
    values: dict[str, Any] = {
        "output_dir": output_dir,
        "max_steps": config.max_steps,
        "learning_rate": config.lr,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "per_device_train_batch_size": 1,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "logging_steps": 10,
        "report_to": [],
        "save_strategy": "no",
        "seed": config.seed,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "use_cpu": not torch.cuda.is_available(),
    }
    values.update(overrides)
    return TrainingArguments(**values)


class MPNTrainer(Trainer):
    """Trains only the newest patch of an MPN model on one edit record, with the patch losses.

    The train dataset is one item per step (``{"record": ..., "step": s}``), built by :meth:`for_record`; the
    ``MultilingualEditCollator`` turns each into the batch of that step. Learning rate, steps, clipping, logging and
    ``report_to`` come from ``TrainingArguments``; the loss weights, margins and stop rule from ``EditConfig``.
    Early stopping is the :class:`PatchEarlyStopping` callback. Dropout is off while editing, so a step's loss is
    deterministic. Without a trainable patch (the FT-L and LoRA baselines), it trains what is trainable on the edit
    loss alone.

    Args:
        *args: As for ``transformers.Trainer``.
        edit_config: The edit's knobs; defaults to ``EditConfig()``.
        **kwargs: As for ``transformers.Trainer``.

    Example:
        >>> trainer = MPNTrainer.for_record(peft_model, record, collator, "run/")  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> trainer.stopper.last.edit_correct  # doctest: +SKIP
        True
    """

    def __init__(self, *args: Any, edit_config: EditConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # logs still reach report_to and state.log_history
        self.edit_config = edit_config or EditConfig()
        self.stopper = PatchEarlyStopping(self.edit_config)
        self.add_callback(self.stopper)
        self.history: list[dict[str, float]] = []

    @classmethod
    def for_record(
        cls,
        model: torch.nn.Module,
        record: EditRecord,
        collator: Any,
        output_dir: str,
        edit_config: EditConfig | None = None,
        args: TrainingArguments | None = None,
        **kwargs: Any,
    ) -> MPNTrainer:
        """A trainer for one edit: ``max_steps`` items of ``{"record": record, "step": s}``."""
        config = edit_config or EditConfig()
        args = args or edit_training_args(output_dir, config)
        dataset = [{"record": record, "step": step} for step in range(args.max_steps)]
        return cls(model=model, args=args, train_dataset=dataset, data_collator=collator, edit_config=config, **kwargs)

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> SequentialSampler:
        return SequentialSampler(self.train_dataset)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        if self.optimizer is None:
            keys, values = trainable_edit_parameters(self.model)
            self.optimizer = build_optimizer(
                keys, self.args.learning_rate, self.args.weight_decay, values, self.edit_config.value_lr_scale
            )
        return self.optimizer

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any
    ) -> Any:
        model.eval()  # no dropout: the loss of a step is deterministic, as on the fast path
        parts, stats, outputs = full_model_step(model, inputs, self.edit_config)
        self.stopper.observe(stats)
        self.history.append(stats.losses)
        return (parts.total, outputs) if return_outputs else parts.total


def trainable_edit_parameters(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The parameters an edit trains, split into (keys and biases, values).

    For MPN models: the newest patch (its value vectors second). Otherwise everything trainable, with no values.
    """
    patch = newest_patch(model)
    if patch is None:
        return [p for p in model.parameters() if p.requires_grad], []
    layer, _ = patch
    keys, values = [], []
    for module in model.modules():
        if isinstance(module, MPNLayer) and module.block == layer.block:
            bank = module.bank(module.active_adapters[0])
            newest = [p for p in (*list(bank.weights)[-1:], *list(bank.biases)[-1:]) if p.requires_grad]
            (values if module.role == "value" else keys).extend(newest)
    return keys, values


def build_optimizer(
    params: list[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    values: list[torch.nn.Parameter] | None = None,
    value_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not biases), as transformers' Trainer does.

    ``values`` (patch value vectors) train at ``lr * value_lr_scale``.
    """
    values = values or []
    if not params and not values:
        raise ValueError("nothing to train: the model has no trainable edit parameters (did you call add_patch()?).")
    groups = []
    for group, group_lr in ((params, lr), (values, lr * value_lr_scale)):
        decay = [p for p in group if p.dim() > 1]
        no_decay = [p for p in group if p.dim() <= 1]
        groups += [
            {"params": decay, "weight_decay": weight_decay, "lr": group_lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": group_lr},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
