"""`MPNEditor`: edit a classifier one fact at a time, with patch neurons (or a baseline), resumably.

>>> editor = MPNEditor(peft_model, tokenizer, languages=["en", "fr", "de"], memory=memory_texts)  # doctest: +SKIP
>>> result = editor.edit(record)                                       # doctest: +SKIP
>>> results = editor.edit_stream(records, checkpoint_dir="run/")       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.records import EditRecord
from ...editing.baselines import make_strategy
from ...editing.editor import Editor, EditResult
from ...editing.fastpath import CachedInputs, FastPathUnsupported, MemoryCache, capture_inputs
from ...editing.losses import EditConfig, LossParts, patch_loss
from ...editing.trainer import (
    MPNTrainer,
    StepStats,
    edit_training_args,
    full_model_step,
    read_positions,
    stats_of,
)
from .collator import MultilingualEditCollator, Sampling, training_languages
from .fastpath import FFNSuffix
from .reading import read_position


logger = logging.getLogger(__name__)


def _check_classifier(model: nn.Module) -> None:
    """``TypeError`` unless ``model`` (or the model inside a PEFT wrapper) is a sequence classifier."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if hasattr(base, "classify_hidden") or name.endswith("ForSequenceClassification"):
        return
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        raise TypeError(f"MPNEditor edits sequence classifiers; {name} is a causal LM: use peft_mpn.CausalLMEditor.")
    raise TypeError(
        f"MPNEditor edits sequence classifiers (a *ForSequenceClassification model or peft_mpn's "
        f"MeanPoolingClassifier); got {name}. Load it with AutoModelForSequenceClassification or "
        "peft_mpn.classifier.load_classifier_any."
    )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run small work (a fast edit: one record's forward pass, then small steps) on one intra-op thread.

    With ``OMP_WAIT_POLICY=PASSIVE`` each multi-threaded operation first wakes the sleeping threads, which costs
    more than a second thread saves on operations this small (measured on 2 cores: a step ~15% faster on one
    thread; encoding one record 27 ms on one thread against 35 ms on two). On an idle host two threads encode one
    record ~10% faster (23 against 26 ms), but with the other core busy ~30% slower (30 against 23 ms): one thread
    is the choice that does not depend on the neighbours. The setting is restored afterwards.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pad(ids: list[list[int]], tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of token id lists, padded as the tokenizer pads (its side and token)."""
    width = max(len(row) for row in ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    for i, row in enumerate(ids):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


def _reads_of(cached: CachedInputs, position: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The read vectors of cached texts and, for each, the row (text) it comes from."""
    reads = cached.read(position)
    if position == "cls":
        return reads, torch.arange(len(cached))
    return reads, torch.arange(len(cached)).unsqueeze(1).expand_as(cached.mask)[cached.mask.bool()]


@dataclass
class _StepPlan:
    """The cached rows of one step's batch (fast path): rows, their FFN output without the new patch, weights."""

    batch: CachedInputs
    base_output: torch.Tensor | None
    weights: torch.Tensor
    act_weights: torch.Tensor
    labels: torch.Tensor


class MPNEditor(Editor):
    """Edits a sequence classifier, one record at a time.

    With ``languages=["en"]`` (or ``method="tpatcher"``) this is Transformer-Patcher: each patch is trained on the
    English edit example. With more languages it is MPN: the patch is trained on the edit and its translations, and
    the memory holds earlier edits in every training language. ``method="ft"`` and ``method="lora"`` run the
    baselines through the same loop, ``method="grace"`` a GRACE-style codebook (one key per English edit).

    Args:
        model: A ``PeftModel`` with an MPN adapter, or a plain transformers classifier (wrapped as the method needs).
        tokenizer: Its tokenizer.
        languages: Training languages (English always included).
        memory: Unrelated texts the patch must stay silent on (never evaluation items).
        method: ``"mpn"``, ``"tpatcher"``, ``"ft"``, ``"lora"`` or ``"grace"``.
        config: The edit's knobs (``EditConfig``). ``None``: the defaults, with ``position`` taken from the
            model's pooling (``"cls"`` for a [CLS]-pooled head, ``"all"`` for a mean-pooled one). A given config
            whose ``position`` does not match the pooling is refused (see ``tasks.classification.reading``).
        fast: ``True`` trains on cached FFN inputs (needs a last-layer patch of a supported classifier),
            ``False`` runs the full model every step (`MPNTrainer`), ``None`` picks fast where possible.
        adapter_name: The MPN adapter to grow.
        sampling, k, weights: Language sampling per step (see `MultilingualEditCollator`).
        max_length: Token limit per text.
        progress: Show progress bars.
        training_args: Extra ``TrainingArguments`` for the full path.
        aliases: An alias table ``{entity: {lang: name}}`` for ``code_switch`` (see `peft_mpn.data.aliases`).
        code_switch: Languages of code-switched training examples (the English edit with its entity names in each
            language, as the pseudo-language ``"en>lang"``); they make keys fire on translations into languages no
            patch saw. With ``method="tpatcher"`` the patch still trains on English sentences only.
        code_switch_memory: With ``code_switch``, add a code-switched copy of each memory text that names an entity
            of ``aliases`` (see `MultilingualEditCollator`), so keys stay silent on unrelated text with foreign names.
        **strategy_kwargs: ``mpn_config`` or ``lora_config`` for wrapping a plain model, ``baseline``
            (`BaselineConfig`) for how FT-L and LoRA edit, ``grace`` (`GraceConfig`) for the GRACE codebook.

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
        aliases: Mapping[str, Mapping[str, str]] | None = None,
        code_switch: Sequence[str] = (),
        code_switch_memory: bool = True,
        **strategy_kwargs: Any,
    ) -> None:
        _check_classifier(model)
        languages = training_languages(languages, english_only=method in ("tpatcher", "grace"))
        if config is None:  # read the patch where the head reads: [CLS] or, for a mean-pooled head, every token
            config = EditConfig(position=read_position(model))
        else:
            read_position(model, config.position)  # refuses a position that would let a patch fire unseen
        strategy = make_strategy(method, model, adapter_name=adapter_name, **strategy_kwargs)
        collator = MultilingualEditCollator.for_edits(
            tokenizer,
            languages,
            memory,
            config,
            sampling=sampling,
            k=k,
            weights=weights,
            max_length=max_length,
            aliases=aliases,
            code_switch=code_switch,
            code_switch_memory=code_switch_memory,
        )
        self._setup(strategy, tokenizer, collator, method=method, config=config, progress=progress)
        self.training_args = training_args or {}
        self.suffix: FFNSuffix | None = None
        if fast is not False:
            try:
                self.suffix = FFNSuffix(self.model, self.strategy.block, self.strategy.key_module)
            except FastPathUnsupported:
                if fast:
                    raise
                logger.info("no fast path for this model; editing through the full model")
        self.fast = self.suffix is not None
        self._memory = MemoryCache()  # read vectors of the memory texts cached so far (fast path)
        self._negative_reads: torch.Tensor | None = None  # the current record's hard negatives (fast path)
        # FFN inputs of the last two records: the skip check of the next record must not evict the one just edited
        self._encoded: list[tuple[tuple[str, ...], CachedInputs, torch.Tensor | None]] = []
        self._base_output: torch.Tensor | None = None  # the edit rows' FFN output without the new patch
        self._edit_inputs: CachedInputs | None = None  # the FFN inputs of the record being edited
        self._plans: dict[tuple[str, ...], _StepPlan] = {}
        self._trained: tuple[Any, Any] = (None, None)  # the new patch's (key, bias) and (value, sharpness)
        self._replay: tuple[CachedInputs, torch.Tensor] | None = None  # baselines: replayed memory, its targets

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
        """Cache the read vectors of memory texts not cached yet (fast path).

        Texts of a recently edited record (which ``edit_stream`` adds to the memory) are taken from its cached FFN
        inputs instead of being encoded again: below the patched layer nothing has changed.
        """
        texts = self.collator.memory[self._memory.texts :]
        if not self.fast or not texts:
            return
        for key, inputs, _ in self._encoded:
            index = {text: i for i, text in enumerate(key[: len(inputs)])}
            if all(text in index for text in texts):
                reads, owners = _reads_of(inputs.select([index[text] for text in texts]), self.config.position)
                break
        else:
            reads, owners = self._encode_reads(texts, desc="caching memory")
        self._memory.append(reads, owners, len(texts))

    @torch.no_grad()
    def _encode_reads(self, texts: Sequence[str], desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Read vectors of many texts and the text each belongs to, in text order.

        Texts are encoded in chunks of similar length (sorted by token count), which pads about half as much as
        chunks in text order on a multilingual memory, and only the read vectors of each chunk are kept.
        """
        chunk = 256
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.collator.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        device = next(self.model.parameters()).device
        reads, owners = [], []
        starts = range(0, len(order), chunk)
        bar = tqdm(starts, desc=desc, disable=not (self.progress and desc and len(texts) > chunk), leave=False)
        for start in bar:
            rows = order[start : start + chunk]
            input_ids, attention_mask = _pad([ids[i] for i in rows], self.tokenizer)
            cached = self.suffix.encode(input_ids.to(device), attention_mask.to(device))
            chunk_reads, chunk_owners = _reads_of(cached, self.config.position)
            reads.append(chunk_reads)
            owners.append(torch.as_tensor(rows, dtype=torch.long)[chunk_owners])
        reads_all, owners_all = torch.cat(reads), torch.cat(owners)
        back = torch.argsort(owners_all, stable=True)
        return reads_all[back], owners_all[back]

    def cache_memory(self) -> int:
        """Compute the read vectors of memory texts not cached yet (fast path; the next edit does it otherwise).

        Returns:
            The number of memory texts cached (0 on the full path, which has no cache).
        """
        self._sync_memory()
        return self._memory.texts

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

    def _correct(self, record: EditRecord, logits: torch.Tensor | None = None) -> dict[str, bool]:
        """Whether each training language's input is predicted as the label (``logits``: those of these inputs)."""
        languages = [lang for lang in self.languages if lang in record.inputs]
        if logits is not None and languages == self.languages:
            predictions = logits.argmax(-1).tolist()
        elif self.fast and languages == self.languages:  # the cached FFN inputs of exactly these texts
            with torch.no_grad():
                predictions = self.suffix.logits(self._encode_record(record)[0]).argmax(-1).tolist()
        else:
            predictions = self.predict([record.inputs[lang] for lang in languages])
        return {lang: pred == record.label for lang, pred in zip(languages, predictions)}

    def _predicts_label(self, record: EditRecord) -> bool:
        """Whether the model already predicts the record's label for its English input."""
        if not self.fast:
            return self.predict([record.inputs["en"]])[0] == record.label
        with torch.no_grad(), _one_thread():
            english = self._encode_record(record)[0].select([0])
            return int(self.suffix.logits(english).argmax(-1)) == record.label

    # ------------------------------------------------------------------ one edit
    def _edit(self, record: EditRecord, start: float) -> EditResult:
        """Add, train and freeze the patch of ``record`` (see `Editor.edit`); success is the English prediction."""
        if self.fast:
            self._sync_memory()  # may encode many texts: with every thread
            with _one_thread():  # everything else in a fast edit is small
                steps, stats = self._train_fast(record)
                logits = self._split_logits()
                self.strategy.end()
                correct = self._correct(record, logits)
        else:
            steps, stats = self._train_full(record)
            self.strategy.end()
            correct = self._correct(record)
        return EditResult(
            id=record.id,
            success=correct.get("en", False),
            steps=steps,
            seconds=time.perf_counter() - start,
            correct=correct,
            method=self.method,
            **self._stats_fields(stats),
        )

    def _encode_record(self, record: EditRecord) -> tuple[CachedInputs, torch.Tensor | None]:
        """FFN inputs of the record's texts (training languages, in order) and read vectors of its hard negatives.

        One forward pass for both; the result is kept for the last two records, so the skip check of
        ``edit_stream``, the edit, its success check and the memory update after it share it.
        """
        texts = [record.inputs[lang] for lang in self.languages]
        negatives = record.negative_texts(self.languages)
        key = (*texts, "\x00negatives", *negatives)
        for known, cached, negative_reads in self._encoded:
            if known == key:
                return cached, negative_reads
        both = self._encode(texts + negatives)
        cached = both.select(list(range(len(texts)))).trim()
        negative_reads = None
        if negatives:
            negative_reads = both.select(list(range(len(texts), len(both)))).read(self.config.position)
        self._encoded = [*self._encoded[-1:], (key, cached, negative_reads)]
        return cached, negative_reads

    def _begin_fast(self, record: EditRecord) -> tuple[CachedInputs, list[nn.Parameter]]:
        self._sync_memory()
        cached, self._negative_reads = self._encode_record(record)
        self._edit_inputs = cached
        self._plans = {}
        self._base_output = None
        if self.strategy.uses_patch and self.suffix.can_split:
            self._base_output = self.suffix.value_output(cached)  # before the new patch exists
        params = self.strategy.begin(record.id, self._init_vector(cached), self.config)
        self._trained = (self.strategy.newest_patch(), self._split_value())  # the same tensors all edit long
        self._replay = self._replay_set(record) if self.strategy.replay else None
        return cached, params

    @torch.no_grad()
    def _replay_set(self, record: EditRecord) -> tuple[CachedInputs, torch.Tensor] | None:
        """Memory texts a baseline replays during this edit (a seeded sample) and their log-probabilities now."""
        reads = self._memory.reads
        if reads is None or not len(self._memory):
            return None
        if self.config.position != "cls":
            logger.warning("BaselineConfig.replay applies with EditConfig.position='cls' only; editing without it")
            return None
        seed = self.config.seed * 1_000_003 + zlib.crc32(record.id.encode())
        n = min(self.strategy.replay, reads.shape[0])
        rows = torch.randperm(reads.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
        batch = CachedInputs(reads[rows].unsqueeze(1).contiguous(), torch.ones(n, 1, dtype=torch.long))
        return batch, torch.log_softmax(self.suffix.logits(batch), -1)

    def _step_plan(self, cached: CachedInputs, label: int, step: int) -> _StepPlan:
        """The rows of step ``step`` (the collator's batch, repeated rows folded into weights), built once."""
        languages = tuple(self.collator.step_languages(step))
        plan = self._plans.get(languages)
        if plan is None:
            counts = Counter(languages)
            rows = [i for i, lang in enumerate(self.languages) if lang in counts]
            weights = torch.tensor([float(counts[self.languages[i]]) for i in rows])
            batch = cached.select(rows)
            act_weights = weights
            if self.config.position == "all":
                act_weights = weights.unsqueeze(1).expand_as(batch.mask)[batch.mask.bool()]
            base = None if self._base_output is None else self._base_output[torch.as_tensor(rows)]
            labels = torch.full((len(rows),), label, dtype=torch.long)
            plan = self._plans[languages] = _StepPlan(batch, base, weights, act_weights, labels)
        return plan

    def _split_value(self) -> tuple[torch.Tensor, float] | None:
        """The new patch's value vectors and the adapter's sharpness, when the step can add the patch alone."""
        if self._base_output is None:
            return None
        adapter = getattr(self.strategy, "adapter_name", None)
        key_bank, value_bank = self.suffix.parts.key.bank(adapter), self.suffix.parts.value.bank(adapter)
        if len(value_bank.weights) == 0 or key_bank.sharpness != value_bank.sharpness:
            return None
        return value_bank.weights[-1], value_bank.sharpness

    @torch.no_grad()
    def _split_logits(self) -> torch.Tensor | None:
        """Logits of the edited record's inputs (every training language) with the trained patch, or None.

        The same computation as a training step's (the FFN output without the patch, plus the patch), so the
        success check costs no pass through the FFN and its earlier patches.
        """
        split, patch = self._split_value(), self.strategy.newest_patch()
        if split is None or patch is None or self._edit_inputs is None:
            return None
        value, sharpness = split
        return self.suffix.patch_logits(self._edit_inputs, self._base_output, *patch, value, sharpness)[0]

    def _fast_step(self, cached: CachedInputs, label: int, step: int) -> tuple[LossParts, StepStats]:
        """Loss of step ``step`` on cached inputs: the collator's batch, with repeated rows folded into weights.

        With a patch on a standard FFN block, the FFN output without the new patch is a constant of the edit
        (``_base_output``), so a step computes only the new unit, the norm and the head.
        """
        plan = self._step_plan(cached, label, step)
        patch, split = self._trained
        if patch is None:
            logits = self.suffix.logits(plan.batch)
            empty = logits.new_zeros(0)
            parts = patch_loss(logits, plan.labels, empty, empty, self.config, plan.weights, use_patch=False)
            if self._replay is not None:  # baselines: keep the replayed memory's predictions (KL to before)
                batch, target = self._replay
                current = torch.log_softmax(self.suffix.logits(batch), -1)
                replay = torch.nn.functional.kl_div(current, target, reduction="batchmean", log_target=True)
                parts.memory = replay
                parts.total = parts.total + self.strategy.baseline.replay_weight * replay
            return parts, stats_of(parts, logits, plan.labels, None, None)
        key, bias = patch
        if split is not None:
            value, sharpness = split
            logits, pre = self.suffix.patch_logits(plan.batch, plan.base_output, key, bias, value, sharpness)
            edit_acts = read_positions(pre, plan.batch.mask, self.config.position)
        else:
            logits = self.suffix.logits(plan.batch)
            edit_acts = plan.batch.read(self.config.position) @ key.T + bias
        memory_acts = self._memory_acts(step, key, bias)
        parts = patch_loss(logits, plan.labels, edit_acts, memory_acts, self.config, plan.weights, plan.act_weights)
        return parts, stats_of(parts, logits, plan.labels, edit_acts, memory_acts)

    def _train_fast(self, record: EditRecord) -> tuple[int, StepStats | None]:
        cached, params = self._begin_fast(record)
        return self._optimise(params, lambda step: self._fast_step(cached, record.label, step))

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
        acts = []
        if len(self._memory):
            sample = self.collator.memory_batch_size
            chosen = None
            if sample is not None and sample < self._memory.texts:
                chosen = self.collator.memory_indices(step, self._memory.texts)
            acts.append(self._memory.acts(key, bias, chosen))
        if self._negative_reads is not None:  # the record's hard negatives, as the collator adds them
            acts.append(self._negative_reads @ key.T + bias)
        if not acts:
            return key.new_zeros(0)
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

    # ------------------------------------------------------------------ streams (the loop: `EditStream`)
    edit_kind = "classification"
    result_class = EditResult

    def _record(self, record: EditRecord | dict[str, Any]) -> EditRecord:
        """The record (parsed from a dict), checked to have an input in every training language and a label that is
        one of the model's classes."""
        if not isinstance(record, (EditRecord, dict)):
            raise TypeError(
                f"an edit record must be an EditRecord or a dict like one JSONL line, not {type(record).__name__}."
            )
        record = record if isinstance(record, EditRecord) else EditRecord.from_dict(record)
        record = self.collator.expand(record)
        self.collator.check(record)
        if record.label is None:
            raise ValueError(f"edit record {record.id!r}: field 'label' is missing; classification edits need it.")
        classes = getattr(getattr(self.model, "config", None), "num_labels", None)
        if isinstance(classes, int) and not 0 <= record.label < classes:
            raise ValueError(
                f"edit record {record.id!r}: field 'label' = {record.label} is not a class of the model "
                f"(num_labels={classes}); use a label in range({classes}) or a classifier with more labels."
            )
        return record

    def is_correct(self, record: EditRecord) -> bool:
        """Whether the model already predicts the record's label for its English input (``edit_stream`` skips it)."""
        return self._predicts_label(record)
