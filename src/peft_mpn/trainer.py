"""`MPNTrainer`: a `transformers.Trainer` that trains the newest patch of an MPN model on one edit.

This is the full-model path: every step runs the whole model on the collator's batch (edit examples and memory
examples). `MPNEditor` uses it for ``fast=False``; the fast path (`peft_mpn.fastpath`) gives the same losses on
cached inputs.
"""

from __future__ import annotations

import json
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
    groups = [g for g in groups if g["params"]]
    # The fused kernel does one pass for all tensors: ~10x less overhead per step on the small patch tensors. Older
    # torch versions have it for CUDA only; they fall back to the default implementation.
    devices = {p.device.type for group in groups for p in group["params"]}
    if devices <= {"cpu", "cuda"} and all(p.dtype.is_floating_point for g in groups for p in g["params"]):
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except RuntimeError:
            pass
    return torch.optim.AdamW(groups, lr=lr)


class LeanAdamW:
    """The fused AdamW step of ``torch.optim.AdamW(fused=True)`` without the ``Optimizer`` bookkeeping around it.

    An edit trains three small tensors for a few dozen steps; ``Optimizer.step`` spends ~0.2 ms per step on
    bookkeeping around a kernel that takes ~10 us. This calls the same kernel with the same arguments, so the
    parameters follow the same trajectory bit for bit (tested against ``torch.optim.AdamW``). Use
    :func:`edit_optimizer`, which falls back to ``torch.optim.AdamW`` where the fused kernel is missing.

    Args:
        groups: Parameter groups as for ``torch.optim.AdamW``: ``params``, ``lr`` and ``weight_decay`` each.
        betas: Adam's betas; ``eps``: its epsilon (the ``torch.optim.AdamW`` defaults).
    """

    def __init__(self, groups: list[dict[str, Any]], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = groups
        self.betas, self.eps = betas, eps
        self.state = [
            (
                [torch.zeros_like(p, memory_format=torch.preserve_format) for p in g["params"]],
                [torch.zeros_like(p, memory_format=torch.preserve_format) for p in g["params"]],
                [torch.tensor(0.0, dtype=_step_dtype(p)) for p in g["params"]],
            )
            for g in groups
        ]

    def zero_grad(self) -> None:
        """Drop the gradients (as ``set_to_none=True``)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW step on every parameter that has a gradient."""
        for group, (exp_avgs, exp_avg_sqs, steps) in zip(self.param_groups, self.state):
            chosen = [i for i, p in enumerate(group["params"]) if p.grad is not None]
            if not chosen:
                continue
            step_tensors = [steps[i] for i in chosen]
            torch._foreach_add_(step_tensors, 1)
            torch._fused_adamw_(
                [group["params"][i] for i in chosen],
                [group["params"][i].grad for i in chosen],
                [exp_avgs[i] for i in chosen],
                [exp_avg_sqs[i] for i in chosen],
                [],
                step_tensors,
                amsgrad=False,
                lr=group["lr"],
                beta1=self.betas[0],
                beta2=self.betas[1],
                weight_decay=group["weight_decay"],
                eps=self.eps,
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )


def _step_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def edit_optimizer(
    params: list[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    values: list[torch.nn.Parameter] | None = None,
    value_lr_scale: float = 1.0,
) -> torch.optim.Optimizer | LeanAdamW:
    """The optimizer of a fast-path edit: :class:`LeanAdamW` where the fused kernel runs, else :func:`build_optimizer`.

    Both follow the same trajectory as ``build_optimizer``'s fused ``torch.optim.AdamW``.
    """
    optimizer = build_optimizer(params, lr, weight_decay, values, value_lr_scale)
    if not getattr(optimizer, "defaults", {}).get("fused") or not hasattr(torch, "_fused_adamw_"):
        return optimizer
    groups = [{k: g[k] for k in ("params", "lr", "weight_decay")} for g in optimizer.param_groups]
    return LeanAdamW(groups, betas=optimizer.defaults["betas"], eps=optimizer.defaults["eps"])


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)`` for a few tensors of one device and dtype.

    The same arithmetic (per-tensor norms, their norm, ``max_norm / (total + 1e-6)`` clamped at 1), without the
    grouping and checks that cost ~0.1 ms per step; anything else goes to torch's function.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if len({(g.device, g.dtype) for g in grads}) != 1 or not hasattr(torch, "_foreach_norm"):
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    norms = torch._foreach_norm(grads, 2.0)
    total = torch.linalg.vector_norm(torch.stack(list(norms)), 2.0)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coefficient)
