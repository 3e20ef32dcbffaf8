"""`MPNTrainer`: a `transformers.Trainer` that trains the newest patch of an MPN model on one edit.

This is the full-model path: every step runs the whole model on the collator's batch (edit examples and memory
examples). `MPNEditor` uses it for ``fast=False``; the fast path (`peft_mpn.fastpath`) gives the same losses on
cached inputs.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from ..data.records import EditRecord
from ..tuner.layer import MPNLayer
from .losses import EditConfig, LossParts, check_finite_loss, patch_loss, read_positions
from .optim import build_optimizer
from .stopping import PatchEarlyStopping, StepStats, stats_of


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


class ReusedBatches:
    """Wraps a `MultilingualEditCollator` so that a step whose batch equals the previous step's reuses it.

    With ``sampling="all"`` and the whole memory (the defaults) every step of an edit has the same batch, and
    tokenising the edit and memory texts again each step is pure overhead. A batch is rebuilt whenever the record,
    the sampled languages, the sampled memory or the memory itself changes.

    Args:
        collator: The collator (``build``, ``step_languages``, ``memory_indices``, ``memory_batch_size``,
            ``memory`` are used).
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self._key: tuple | None = None
        self._batch: dict[str, Any] | None = None

    def _key_of(self, record: Any, step: int) -> tuple:
        collator = self.collator
        memory = collator.memory
        sampled = collator.memory_batch_size is not None and collator.memory_batch_size < len(memory)
        chosen = tuple(collator.memory_indices(step)) if sampled else None
        content = record.to_dict() if hasattr(record, "to_dict") else record
        return (
            json.dumps(content, sort_keys=True, default=str),
            tuple(collator.step_languages(step)),
            chosen,
            id(memory),
            len(memory),
            memory[-1] if memory else None,
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if len(features) != 1:
            return self.collator(features)  # the collator raises its own error
        step = int(features[0].get("step", 0))
        key = self._key_of(features[0]["record"], step)
        if key != self._key:
            self._batch = self.collator(features)
            self._key = key
        return self._batch


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
        batches = ReusedBatches(collator) if hasattr(collator, "step_languages") else collator
        return cls(model=model, args=args, train_dataset=dataset, data_collator=batches, edit_config=config, **kwargs)

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
        check_finite_loss(parts, self.state.global_step)
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
