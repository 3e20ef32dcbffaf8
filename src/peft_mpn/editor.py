"""`MPNEditor`: edit a classifier one fact at a time, with patch neurons (or a baseline), resumably.

>>> editor = MPNEditor(peft_model, tokenizer, languages=["en", "fr", "de"], memory=memory_texts)  # doctest: +SKIP
>>> result = editor.edit(record)                                       # doctest: +SKIP
>>> results = editor.edit_stream(records, checkpoint_dir="run/")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .baselines import Strategy, make_strategy
from .collator import MultilingualEditCollator, Sampling
from .data.records import EditRecord
from .fastpath import CachedInputs, FastPathUnsupported, FFNSuffix, capture_inputs
from .losses import EditConfig, LossParts, patch_loss
from .trainer import (
    MPNTrainer,
    PatchEarlyStopping,
    StepStats,
    build_optimizer,
    edit_training_args,
    full_model_step,
    stats_of,
)
from .utils.io import atomic_write_json


logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1


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


class MPNEditor:
    """Edits a sequence classifier, one record at a time.

    With ``languages=["en"]`` (or ``method="tpatcher"``) this is Transformer-Patcher: each patch is trained on the
    English edit example. With more languages it is MPN: the patch is trained on the edit and its translations, and
    the memory holds earlier edits in every training language. ``method="ft"`` and ``method="lora"`` run the
    baselines through the same loop.

    Args:
        model: A ``PeftModel`` with an MPN adapter, or a plain transformers classifier (wrapped as the method needs).
        tokenizer: Its tokenizer.
        languages: Training languages (English always included).
        memory: Unrelated texts the patch must stay silent on (never evaluation items).
        method: ``"mpn"``, ``"tpatcher"``, ``"ft"`` or ``"lora"``.
        config: The edit's knobs (``EditConfig``).
        fast: ``True`` trains on cached FFN inputs (needs a last-layer patch of a supported classifier),
            ``False`` runs the full model every step (`MPNTrainer`), ``None`` picks fast where possible.
        adapter_name: The MPN adapter to grow.
        sampling, k, weights: Language sampling per step (see `MultilingualEditCollator`).
        max_length: Token limit per text.
        progress: Show progress bars.
        training_args: Extra ``TrainingArguments`` for the full path.
        **strategy_kwargs: ``mpn_config`` or ``lora_config`` for wrapping a plain model.

    Example:
        >>> editor = MPNEditor(model, tokenizer, languages=["en", "fr"], memory=["Water is wet."])  # doctest: +SKIP
        >>> editor.edit(EditRecord.from_dict({"id": "x", "inputs": {"en": "...", "fr": "..."}, "label": 1}))
        ... # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        languages: Sequence[str] = ("en",),
        memory: Sequence[str] | None = None,
        *,
        method: str = "mpn",
        config: EditConfig | None = None,
        fast: bool | None = None,
        adapter_name: str = "default",
        sampling: Sampling = "all",
        k: int | None = None,
        weights: dict[str, float] | None = None,
        max_length: int = 128,
        progress: bool = True,
        training_args: dict[str, Any] | None = None,
        **strategy_kwargs: Any,
    ) -> None:
        if isinstance(languages, str):
            raise TypeError(f"languages must be a list of codes like ['en', 'fr'], not the string {languages!r}.")
        if method == "tpatcher":
            languages = ["en"]
        self.method = method
        self.config = config or EditConfig()
        self.strategy: Strategy = make_strategy(method, model, adapter_name=adapter_name, **strategy_kwargs)
        self.model = self.strategy.model
        self.tokenizer = tokenizer
        self.progress = progress
        self.training_args = training_args or {}
        self.collator = MultilingualEditCollator(
            tokenizer,
            languages,
            memory,
            sampling=sampling,
            k=k,
            weights=weights,
            edit_repeat=self.config.edit_repeat,
            memory_batch_size=self.config.memory_batch_size,
            max_length=max_length,
            seed=self.config.seed,
        )
        self.languages = self.collator.languages
        self.suffix: FFNSuffix | None = None
        if fast is not False:
            try:
                self.suffix = FFNSuffix(self.model, self.strategy.block, self.strategy.key_module)
            except FastPathUnsupported:
                if fast:
                    raise
                logger.info("no fast path for this model; editing through the full model")
        self.fast = self.suffix is not None
        self._memory_chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._memory_reads: torch.Tensor | None = None
        self._memory_owner: torch.Tensor | None = None
        self._memory_count = 0  # memory texts cached so far
        self._negative_reads: torch.Tensor | None = None  # the current record's hard negatives (fast path)
        self.stopper = PatchEarlyStopping(self.config)

    # ------------------------------------------------------------------ memory
    def _tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in self.collator.tokenize(texts).items()}

    def _encode(self, texts: Sequence[str], desc: str | None = None) -> CachedInputs:
        parts = []
        chunk = 256
        starts = range(0, len(texts), chunk)
        bar = tqdm(starts, desc=desc, disable=not (self.progress and desc and len(texts) > chunk), leave=False)
        for start in bar:
            batch = self._tokenize(texts[start : start + chunk])
            parts.append(self.suffix.encode(batch["input_ids"], batch["attention_mask"]))
        width = max(p.hidden.shape[1] for p in parts)
        hidden = torch.cat([nn.functional.pad(p.hidden, (0, 0, 0, width - p.hidden.shape[1])) for p in parts])
        mask = torch.cat([nn.functional.pad(p.mask, (0, width - p.mask.shape[1])) for p in parts])
        return CachedInputs(hidden, mask)

    def _sync_memory(self) -> None:
        """Cache the read vectors of memory texts not cached yet (fast path)."""
        texts = self.collator.memory[self._memory_count :]
        if not self.fast or not texts:
            return
        cached = self._encode(texts, desc="caching memory")
        reads = cached.read(self.config.position)
        if self.config.position == "cls":
            owners = torch.arange(len(cached))
        else:
            owners = torch.arange(len(cached)).unsqueeze(1).expand_as(cached.mask)[cached.mask.bool()]
        self._memory_chunks.append((reads, owners + self._memory_count))
        self._memory_count += len(texts)
        self._memory_reads = torch.cat([r for r, _ in self._memory_chunks])
        self._memory_owner = torch.cat([o for _, o in self._memory_chunks])

    def add_to_memory(self, texts: Sequence[str]) -> None:
        """Add texts (e.g. an edit's inputs) to the memory that later patches must stay silent on."""
        self.collator.memory.extend(texts)

    @property
    def memory_size(self) -> int:
        """Number of memory texts."""
        return len(self.collator.memory)

    # ------------------------------------------------------------------ predictions
    @torch.no_grad()
    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[int]:
        """The model's predicted class for each text (full model, eval mode)."""
        was_training = self.model.training
        self.model.eval()
        predictions: list[int] = []
        for start in range(0, len(texts), batch_size):
            logits = self.model(**self._tokenize(texts[start : start + batch_size])).logits
            predictions += logits.argmax(-1).tolist()
        self.model.train(was_training)
        return predictions

    def _correct(self, record: EditRecord) -> dict[str, bool]:
        languages = [lang for lang in self.languages if lang in record.inputs]
        predictions = self.predict([record.inputs[lang] for lang in languages])
        return {lang: pred == record.label for lang, pred in zip(languages, predictions)}

    # ------------------------------------------------------------------ one edit
    def edit(self, record: EditRecord | dict[str, Any]) -> EditResult:
        """Edit the model so that ``record`` is predicted as its label; the patch is frozen afterwards.

        Raises:
            ValueError: If the record is invalid or lacks a training language.
        """
        if isinstance(record, dict):
            record = EditRecord.from_dict(record)
        self.collator.check(record)
        if record.label is None:
            raise ValueError(f"edit record {record.id!r}: field 'label' is missing; classification edits need it.")
        start = time.perf_counter()
        self.model.eval()
        self.stopper.reset()
        if self.fast:
            steps, stats = self._train_fast(record)
        else:
            steps, stats = self._train_full(record)
        self.strategy.end()
        correct = self._correct(record)
        return EditResult(
            id=record.id,
            success=correct.get("en", False),
            steps=steps,
            seconds=time.perf_counter() - start,
            losses=stats.losses if stats else {},
            activation_edit=stats.activation_edit if stats else None,
            activation_memory=stats.activation_memory if stats else None,
            correct=correct,
            method=self.method,
        )

    def _begin_fast(self, record: EditRecord) -> tuple[CachedInputs, list[nn.Parameter]]:
        self._sync_memory()
        cached = self._encode([record.inputs[lang] for lang in self.languages])
        negatives = record.negative_texts(self.languages)
        self._negative_reads = self._encode(negatives).read(self.config.position) if negatives else None
        return cached, self.strategy.begin(record.id, self._init_vector(cached), self.config)

    def _fast_step(self, cached: CachedInputs, label: int, step: int) -> tuple[LossParts, StepStats]:
        """Loss of step ``step`` on cached inputs: the collator's batch, with repeated rows folded into weights."""
        counts = Counter(self.collator.step_languages(step))
        rows = [i for i, lang in enumerate(self.languages) if lang in counts]
        weights = torch.tensor([float(counts[self.languages[i]]) for i in rows])
        batch = cached.select(rows)
        logits = self.suffix.logits(batch)
        labels = torch.full((len(rows),), label, dtype=torch.long)
        patch = self.strategy.newest_patch()
        if patch is None:
            empty = logits.new_zeros(0)
            parts = patch_loss(logits, labels, empty, empty, self.config, weights, use_patch=False)
            return parts, stats_of(parts, logits, labels, None, None)
        key, bias = patch
        edit_acts = batch.read(self.config.position) @ key.T + bias
        act_weights = weights
        if self.config.position == "all":
            act_weights = weights.unsqueeze(1).expand_as(batch.mask)[batch.mask.bool()]
        memory_acts = self._memory_acts(step, key, bias)
        parts = patch_loss(logits, labels, edit_acts, memory_acts, self.config, weights, act_weights)
        return parts, stats_of(parts, logits, labels, edit_acts, memory_acts)

    def _train_fast(self, record: EditRecord) -> tuple[int, StepStats | None]:
        cached, params = self._begin_fast(record)
        values = self.strategy.value_parameters()
        keys = [p for p in params if all(p is not v for v in values)]
        optimizer = build_optimizer(keys, self.config.lr, self.config.weight_decay, values, self.config.value_lr_scale)
        stats: StepStats | None = None
        steps = 0
        for step in range(self.config.max_steps):
            parts, stats = self._fast_step(cached, record.label, step)
            if self.stopper.observe(stats):
                break
            optimizer.zero_grad()
            parts.total.backward()
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
            optimizer.step()
            steps = step + 1
        return steps, stats

    def initial_losses(self, record: EditRecord | dict[str, Any]) -> dict[str, float]:
        """The loss parts of step 0 of an edit of ``record``, leaving the model unchanged.

        Useful to check a set-up, and to compare the fast and the full path (they agree to 1e-5).
        """
        if isinstance(record, dict):
            record = EditRecord.from_dict(record)
        self.collator.check(record)
        self.model.eval()
        with torch.no_grad():
            if self.fast:
                cached, _ = self._begin_fast(record)
                parts, _ = self._fast_step(cached, record.label, 0)
            else:
                self._begin_full(record)
                parts, _, _ = full_model_step(self.model, self._full_batch(record, 0), self.config)
        self.strategy.abort()
        return parts.as_floats()

    def _init_vector(self, cached: CachedInputs) -> torch.Tensor:
        """The English edit's FFN input where the patch is read (row 0 of ``cached``), for the key init."""
        if self.config.position == "cls":
            return cached.hidden[0, 0]
        return cached.hidden[0][cached.mask[0].bool()].mean(0)

    def _memory_acts(self, step: int, key: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        parts = []
        reads = self._memory_reads
        if reads is not None and reads.numel():
            chosen = self.collator.memory_indices(step, self._memory_count)
            if len(chosen) < self._memory_count:
                reads = reads[torch.isin(self._memory_owner, torch.tensor(chosen))]
            parts.append(reads)
        if self._negative_reads is not None:  # the record's hard negatives, as the collator adds them
            parts.append(self._negative_reads)
        if not parts:
            return key.new_zeros(0)
        acts = [reads @ key.T + bias for reads in parts]  # no copy of the (large) memory
        return acts[0] if len(acts) == 1 else torch.cat(acts)

    def _full_batch(self, record: EditRecord, step: int) -> dict[str, Any]:
        device = next(self.model.parameters()).device
        batch = self.collator.build(record, step)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _begin_full(self, record: EditRecord) -> None:
        batch = self._tokenize([record.inputs["en"]])
        cached = capture_inputs(self.model, self.strategy.key_module, batch["input_ids"], batch["attention_mask"])
        self.strategy.begin(record.id, self._init_vector(cached), self.config)

    def _train_full(self, record: EditRecord) -> tuple[int, StepStats | None]:
        self._begin_full(record)
        with tempfile.TemporaryDirectory(prefix="mpn-edit-") as tmp:
            args = edit_training_args(tmp, self.config, **self.training_args)
            trainer = MPNTrainer.for_record(self.model, record, self.collator, tmp, self.config, args=args)
            trainer.remove_callback(trainer.stopper)
            trainer.stopper = self.stopper
            trainer.add_callback(self.stopper)
            trainer.train()
            steps = trainer.state.global_step
        self.model.eval()
        return steps, self.stopper.last

    # ------------------------------------------------------------------ streams
    def edit_stream(
        self,
        records: Iterable[EditRecord | dict[str, Any]],
        *,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        skip_correct: bool = True,
    ) -> list[EditResult]:
        """Edit records in order, each on top of the earlier ones.

        A record the model already gets right (in English) is skipped when ``skip_correct``. After each edit, its
        inputs in every training language join the memory, so later patches stay silent on earlier edits. With
        ``checkpoint_dir``, the edited state and the results are saved atomically every ``checkpoint_every`` edits
        (and at the end); calling again with the same records resumes after the last checkpoint without redoing or
        losing edits.

        Returns:
            One `EditResult` per record, in order.
        """
        records = [r if isinstance(r, EditRecord) else EditRecord.from_dict(r) for r in records]
        for record in records:
            self.collator.check(record)
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError("edit_stream: record ids must be unique (field 'id' repeats).")
        results: list[EditResult] = []
        if checkpoint_dir is not None:
            results = self._resume(Path(checkpoint_dir), records)
        bar = tqdm(
            total=len(records), initial=len(results), desc=f"editing ({self.method})", disable=not self.progress
        )
        for index in range(len(results), len(records)):
            record = records[index]
            if skip_correct and self.predict([record.inputs["en"]])[0] == record.label:
                results.append(EditResult(id=record.id, success=True, skipped=True, method=self.method))
            else:
                results.append(self.edit(record))
                self.add_to_memory([record.inputs[lang] for lang in self.languages])
            edited = [r for r in results if not r.skipped]
            bar.update(1)
            bar.set_postfix(edits=len(edited), success=f"{sum(r.success for r in edited)}/{len(edited)}")
            if checkpoint_dir is not None:
                last = index == len(records) - 1
                if last or (not results[-1].skipped and len(edited) % checkpoint_every == 0):
                    self._checkpoint(Path(checkpoint_dir), ids, results)
        bar.close()
        return results

    def _checkpoint(self, directory: Path, ids: list[str], results: list[EditResult]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
        self.strategy.save(tmp / "weights")
        state = {
            "format": CHECKPOINT_FORMAT,
            "method": self.method,
            "languages": self.languages,
            "ids": ids,
            "results": [r.to_dict() for r in results],
        }
        atomic_write_json(tmp / "state.json", state)
        current, old = directory / "current", directory / ".old"
        if old.exists():
            shutil.rmtree(old)
        if current.exists():
            os.replace(current, old)
        os.replace(tmp, current)
        shutil.rmtree(old, ignore_errors=True)

    def _resume(self, directory: Path, records: list[EditRecord]) -> list[EditResult]:
        current = directory / "current"
        if not (current / "state.json").exists():
            if (directory / ".old" / "state.json").exists():  # interrupted between the two renames
                os.replace(directory / ".old", current)
            else:
                return []
        state = json.loads((current / "state.json").read_text(encoding="utf-8"))
        done = state["results"]
        ids = [r.id for r in records]
        if state.get("format") != CHECKPOINT_FORMAT or state.get("method") != self.method:
            raise ValueError(
                f"checkpoint in {directory} is for method {state.get('method')!r}; use another checkpoint_dir."
            )
        if [r["id"] for r in done] != ids[: len(done)]:
            raise ValueError(
                f"checkpoint in {directory} was made for another stream of records (ids differ); use a new "
                "checkpoint_dir or the same records."
            )
        self.strategy.load(current / "weights")
        self.model.eval()
        by_id = {r.id: r for r in records}
        edited = [by_id[r["id"]] for r in done if not r["skipped"]]
        self.add_to_memory([rec.inputs[lang] for rec in edited for lang in self.languages])
        logger.info("resumed %d of %d records from %s", len(done), len(records), current)
        return [EditResult(**r) for r in done]
