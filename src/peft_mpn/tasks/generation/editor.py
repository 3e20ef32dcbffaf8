"""`CausalLMEditor`: generation edits of decoder LMs with token-level patch neurons, across languages.

An edit is a prompt and a new target answer. As in Transformer-Patcher's seq2seq setting, an edit adds one neuron
per *wrong* target token (up to ``max_neurons``) to the last FFN layer, each trained to fire at the position that
predicts its token. MPN trains the same neurons on the translated prompts and targets as well.

>>> editor = CausalLMEditor(peft_model, tokenizer, languages=["en", "fr"], memory=unrelated_texts)  # doctest: +SKIP
>>> result = editor.edit(record)                                         # doctest: +SKIP
>>> editor.generate([record.prompt["fr"]], max_new_tokens=3)             # doctest: +SKIP
[' Lyon']
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.generation import GenerationEditRecord
from ...editing.baselines import BaselineConfig, PatchStrategy, check_finite_input, make_strategy
from ...editing.collator import Sampling, training_languages
from ...editing.editor import Editor, EditResult
from ...editing.fastpath import FastPathUnsupported, capture_inputs
from ...editing.keyfit import fit_key
from ...editing.losses import EditConfig, LossParts, activation_loss, edit_loss, memory_loss
from ...editing.stopping import StepStats, stats_of
from ...tuner.config import MPNConfig
from ...tuner.layer import ROLES
from ...utils.checks import is_int
from .collator import EncodedEdit, GenerationEditCollator, pad_right
from .fastpath import CachedStates, LMLayerSuffix, LMSuffix, NotLastLayer
from .generate import greedy_generate, model_device, teacher_forced_predictions
from .metrics import token_accuracy, token_agreement


logger = logging.getLogger(__name__)
GENERATION_METHODS = ("mpn", "tpatcher", "ft", "lora")
KEY_INITS = ("input", "fit")  # CausalLMEditor's key_init


@dataclass
class GenerationEditResult(EditResult):
    """The outcome of one generation edit: an `EditResult` with the generation checks.

    Attributes:
        success: Right after the edit, the English target is the argmax under teacher forcing and greedy generation
            from the English prompt produces it.
        skipped: The model already produced every training language's target, so nothing was edited.
        seconds: Wall time of the edit (caching, training and the checks).
        activation_edit: Smallest pre-activation of the new neurons at their target positions, last step.
        activation_memory: Largest pre-activation of the new neurons on the memory, last step.
        correct: Training language -> the target is the argmax at every position under teacher forcing.
        method: ``"mpn"``, ``"tpatcher"``, ``"ft"`` or ``"lora"``.
        neurons: Neurons of the new patch: one per wrong target token, at most ``max_neurons``.
        generated: Training language -> greedy generation from the prompt produces the target.
        outputs: Training language -> the greedy generation (as many tokens as the target), decoded.
    """

    neurons: int = 0
    generated: dict[str, bool] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class _LanguageRows:
    """One training language of an edit: its ids, target, and which neuron fires at which target position."""

    encoded: EncodedEdit
    target: torch.Tensor  # (t,)
    positions: torch.Tensor  # (p,) indices into the target of the positions a neuron must fire at
    neurons: torch.Tensor  # (p,) the neuron of each of those positions
    x: torch.Tensor | None = None  # (t, d_in) fast path: FFN inputs at the target positions
    row: int = 0  # the row of this language in the edit's cached states (the layer fast path)
    z: torch.Tensor | None = None  # (t, d_model) fast path: final-norm inputs there (see CachedStates)
    m: torch.Tensor | None = None  # (t, d_model) fast path, post-MLP-norm models: MLP outputs there


def assign_neurons(wrong: Sequence[int], n_neurons: int) -> list[int]:
    """The neuron of each wrong target position, in order: one each while there are enough neurons, otherwise
    ``n_neurons`` runs of consecutive positions of (nearly) equal length.

    Example:
        >>> assign_neurons([0, 2, 3, 5], 2)
        [0, 0, 1, 1]
        >>> assign_neurons([1, 4], 5)
        [0, 1]
    """
    return [rank * n_neurons // len(wrong) if len(wrong) > n_neurons else rank for rank in range(len(wrong))]


def _patch_suffix(model: nn.Module, parts: dict[str, nn.Module], adapter_name: str) -> LMSuffix | LMLayerSuffix:
    """The fast path of a patch: `LMSuffix` in the last layer, `LMLayerSuffix` in an earlier one."""
    try:
        return LMSuffix(model, parts, adapter_name)
    except NotLastLayer:
        return LMLayerSuffix(model, parts, adapter_name)


def split_by_spelling(
    assigned: dict[str, list[int]], first_tokens: dict[str, list[int]], max_neurons: int
) -> tuple[dict[str, list[int]], int]:
    """One neuron per (neuron, token) pair: languages whose runs of a neuron start with different tokens get their
    own neuron, so that no value vector is asked for two tokens at once; languages that agree share it.

    Args:
        assigned: Language -> the neuron of each wrong position (:func:`assign_neurons`), languages in order.
        first_tokens: Language -> the target token at each of those positions.
        max_neurons: Most neurons; with more (neuron, token) pairs than that, ``assigned`` is kept as it is.

    Returns:
        ``(language -> the new neuron of each wrong position, the number of neurons)``.

    Example:
        >>> split_by_spelling({"en": [0, 1], "fr": [0, 1]}, {"en": [7, 8], "fr": [9, 8]}, 5)
        ({'en': [0, 2], 'fr': [1, 2]}, 3)
    """
    groups: dict[tuple[int, int], None] = {}
    keys: dict[str, list[tuple[int, int]]] = {}
    for lang, neurons in assigned.items():
        start = {}  # the token at the first position of each neuron's run in this language
        for neuron, token in zip(neurons, first_tokens[lang]):
            start.setdefault(neuron, token)
        keys[lang] = [(neuron, start[neuron]) for neuron in neurons]
        groups.update(dict.fromkeys(keys[lang]))
    count = max((max(n) + 1 for n in assigned.values() if n), default=0)
    if len(groups) > max_neurons or len(groups) == count:
        return assigned, count
    order = {key: i for i, key in enumerate(sorted(groups, key=lambda k: (k[0], list(groups).index(k))))}
    return {lang: [order[key] for key in keys[lang]] for lang in assigned}, len(groups)


class CausalLMEditor(Editor):
    """Edits a causal LM so that a prompt is continued with a new target, in every training language.

    Each edit adds one patch to the last FFN layer with one neuron per wrong target token of the training languages
    (the largest count over languages, capped at ``max_neurons``). The k-th wrong token of each language is
    assigned to neuron k; with more wrong tokens than neurons, they are split into ``max_neurons`` runs of
    consecutive tokens (:func:`assign_neurons`). So the English edit and its translations train the same neurons:
    this is MPN. With ``languages=["en"]`` (or ``method="tpatcher"``) it is Transformer-Patcher's
    token-level patching. The loss is Transformer-Patcher's:

    - edit loss: cross-entropy of the target tokens under teacher forcing, per language (English weighted
      ``edit_repeat``);
    - activation loss: ``exp(-a)`` of each neuron's pre-activation at its assigned positions;
    - memory loss: pre-activations of the new neurons at every position of the memory texts below
      ``memory_threshold``, and ``gap_margin`` below the edit's.

    After an edit in :meth:`edit_stream`, the edit's prompt and target in every training language join the memory.

    ``method="ft"`` (FT-L) and ``method="lora"`` run the baselines through the same loop, as for classifiers: no patch,
    the last layer's MLP weights (FT-L, within ``BaselineConfig.norm_constraint``) or a LoRA adapter on its
    projections are trained on the edit loss of every training language, with the same stop rule (stop once every
    target token is the argmax in every training language), ``BaselineConfig``'s learning rate and step cap, and
    ``BaselineConfig.replay`` memory positions whose next-token distribution must not move (a KL term, fast path).

    Args:
        model: A causal LM, plain (wrapped with ``mpn_config`` or the preset ``MPNConfig()``) or a ``PeftModel``
            whose MPN adapter patches a single FFN block.
        tokenizer: Its tokenizer.
        languages: Training languages (English always included).
        memory: Unrelated texts the patch must stay silent on (never evaluation prompts).
        method: ``"mpn"``, ``"tpatcher"`` (English only), ``"ft"`` (FT-L) or ``"lora"``.
        config: The edit's knobs (`EditConfig`); ``position`` is not used (token-level edits read every target
            position).
        max_neurons: Most neurons per edit (Transformer-Patcher: 5). With more wrong target tokens than that, the
            wrong positions are split into ``max_neurons`` runs of consecutive positions, one neuron per run.
        split_spellings: Where training languages spell the target differently ("Yerevan", "Erevan"), give each
            token its own neuron (:func:`split_by_spelling`, within ``max_neurons``) instead of asking one neuron's
            value vector for both.
        memory_hard_k: The memory loss looks at the ``memory_hard_k`` most active (position, neuron) pairs of the
            memory each step (``None``: all of them). A token-level memory holds thousands of positions, and in a
            mean over all of them the few positions where the neuron still fires hardly count; on the tiny test
            models 64 gave fewer steps and better locality than the full mean.
        fast: ``True`` trains on cached states (patch in the last layer of a supported LM), ``False`` runs the full
            model every step, ``None`` picks the fast path where it is supported and verified.
        adapter_name: The MPN adapter to grow.
        mpn_config: The adapter config when ``model`` is a plain LM.
        lora_config: LoRA's config (``method="lora"``; default: rank ``baseline.rank`` on the edited MLP).
        baseline: How FT-L and LoRA edit (`BaselineConfig`; default ``BaselineConfig.for_method(method)``).
        sampling, k, weights: Language sampling per step (see `MultilingualEditCollator`).
        max_length: Token limit per text.
        progress: Show progress bars.
        aliases: An alias table ``{entity: {lang: name}}`` for ``code_switch`` (see `peft_mpn.data.aliases`).
        code_switch: Languages of code-switched training examples (the English prompt with its entity names in each
            language and the English target, as the pseudo-language ``"en>lang"``), also for ``method="tpatcher"``
            (they are English prompts): they aim the keys at the edit's subject in any script.
        code_switch_memory: With ``code_switch``, add a code-switched copy of each memory text that names an entity
            of ``aliases`` (`GenerationEditCollator`).
        key_init: ``"input"`` (Transformer-Patcher: each key starts at its first input, ``h / |h|^2``, bias 0) or
            ``"fit"``: each key and bias start as a balanced logistic regression of the neuron's inputs in every
            training language against the memory (`peft_mpn.editing.keyfit.fit_key`), which fires on translations
            the input key misses. ``"fit"`` needs the fast path (cached memory inputs); without it the input key is
            used.
        train_key: Train the new keys (and gated MLPs' up units) with the value; ``False`` trains the value only,
            so that a fitted key keeps its decision boundary.

    Example:
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer  # doctest: +SKIP
        >>> lm = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")  # doctest: +SKIP
        >>> tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B")  # doctest: +SKIP
        >>> editor = CausalLMEditor(lm, tok, languages=["en", "fr"], memory=["The sun rises in the"])  # doctest: +SKIP
        >>> editor.edit({"id": "x", "prompt": {"en": "The capital of France is", "fr": "La capitale de la France est"},
        ...              "target": {"en": " Lyon", "fr": " Lyon"}}).success  # doctest: +SKIP
        True
    """

    edit_kind = "generation"
    result_class = GenerationEditResult

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        languages: Sequence[str] = ("en",),
        memory: Sequence[str] | None = None,
        *,
        method: str = "mpn",
        config: EditConfig | None = None,
        max_neurons: int = 5,
        split_spellings: bool = True,
        memory_hard_k: int | None = 64,
        fast: bool | None = None,
        adapter_name: str = "default",
        mpn_config: MPNConfig | None = None,
        lora_config: Any = None,
        baseline: BaselineConfig | None = None,
        sampling: Sampling = "all",
        k: int | None = None,
        weights: dict[str, float] | None = None,
        max_length: int = 128,
        progress: bool = True,
        aliases: Mapping[str, Mapping[str, str]] | None = None,
        code_switch: Sequence[str] = (),
        code_switch_memory: bool = True,
        key_init: str = "input",
        train_key: bool = True,
    ) -> None:
        if method not in GENERATION_METHODS:
            raise ValueError(f"CausalLMEditor method must be one of {GENERATION_METHODS}, not {method!r}.")
        if not is_int(max_neurons, least=1):
            raise ValueError(f"CausalLMEditor max_neurons must be a positive int, got {max_neurons!r}.")
        if memory_hard_k is not None and not is_int(memory_hard_k, least=1):
            raise ValueError(
                f"CausalLMEditor memory_hard_k must be a positive int or None (every memory position), got "
                f"{memory_hard_k!r}."
            )
        if key_init not in KEY_INITS:
            raise ValueError(f"CausalLMEditor key_init must be 'input' or 'fit', not {key_init!r}.")
        languages = training_languages(languages, english_only=method == "tpatcher")
        self.key_init = key_init
        self.train_key = bool(train_key)
        self.max_neurons = max_neurons
        self.split_spellings = bool(split_spellings)
        self.memory_hard_k = memory_hard_k
        self.adapter_name = adapter_name
        strategy = make_strategy(
            "mpn" if method == "tpatcher" else method,
            model,
            adapter_name=adapter_name,
            mpn_config=mpn_config,
            lora_config=lora_config,
            baseline=baseline,
        )
        self.uses_patch = isinstance(strategy, PatchStrategy)
        config = config or EditConfig()
        collator = GenerationEditCollator.for_edits(
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
        positions = getattr(getattr(strategy.model, "config", None), "max_position_embeddings", None)
        collator.positions = positions if is_int(positions, least=1) else None  # learned positions end there
        self._setup(strategy, tokenizer, collator, method=method, config=config, progress=progress)
        self.suffix: LMSuffix | LMLayerSuffix | None = None
        self._fast_requested = fast
        self._verified = False
        self._states: CachedStates | None = None  # the layer fast path: the current edit's cached layer inputs
        if fast is not False:
            try:
                if self.uses_patch:
                    self.suffix = _patch_suffix(self.model, strategy.parts, adapter_name)
                else:
                    self.suffix = LMSuffix(self.model, {"key": strategy.key_module}, whole_mlp=True)
            except FastPathUnsupported:
                if fast:
                    raise
                logger.info("no generation fast path for this model; editing through the full model")
        self._memory_x: torch.Tensor | None = None
        self._memory_z: torch.Tensor | None = None  # baselines with replay: the residual without the MLP's part
        self._memory_owner: torch.Tensor | None = None
        self._memory_count = 0
        self._params: list[nn.Parameter] = []  # what the current edit trains
        self._replay: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # baselines: x, z, log-probs
        self._replay_warned = False
        self._fit_warned = False

    @property
    def fast(self) -> bool:
        """Whether edits train on cached states (the fast path)."""
        return self.suffix is not None

    @property
    def pad_id(self) -> int:
        """The id used to pad batches (masked out everywhere)."""
        return self.collator.pad_id

    # ------------------------------------------------------------------ memory
    def _sync_memory(self) -> None:
        """Cache the FFN inputs of memory texts not cached yet (fast path), every non-padding position.

        The baselines need them only to replay (``BaselineConfig.replay``), and then with the residual stream too.
        """
        texts = self.collator.memory[self._memory_count :]
        replay = not self.uses_patch and self.strategy.replay > 0
        if self.suffix is None or not texts or not (self.uses_patch or replay):
            return
        chunk = 64  # only the non-padding positions are kept, so padding never costs more than one chunk
        xs, zs, owners = [], [], []
        starts = range(0, len(texts), chunk)
        bar = tqdm(starts, desc="caching memory", leave=False, disable=not (self.progress and len(texts) > chunk))
        for start in bar:
            ids = [self.collator.text_ids(t) for t in texts[start : start + chunk]]
            states = self.suffix.capture(ids, self.pad_id, with_z=replay)
            keep = states.mask.bool()
            index = torch.arange(len(ids), device=keep.device).unsqueeze(1).expand_as(keep)[keep]
            xs.append(states.x[keep])
            if replay:
                zs.append(states.z[keep])
            owners.append(index + self._memory_count + start)
        if self._memory_x is not None:
            xs.insert(0, self._memory_x)
            owners.insert(0, self._memory_owner)
            if replay:
                zs.insert(0, self._memory_z)
        self._memory_x, self._memory_owner = torch.cat(xs), torch.cat(owners)
        self._memory_z = torch.cat(zs) if replay else None
        self._memory_count += len(texts)

    # ------------------------------------------------------------------ checks
    def _record(self, record: GenerationEditRecord | dict[str, Any]) -> GenerationEditRecord:
        if isinstance(record, dict):
            record = GenerationEditRecord.from_dict(record)
        record = self.collator.expand(record)
        self.collator.check(record)
        return record

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 8, *, base: bool = False) -> list[str]:
        """Greedy continuations of text prompts, decoded (``base=True``: with the adapter disabled)."""
        ids = [self.collator.text_ids(p) for p in prompts]
        with self.strategy.unedited() if base else contextlib.nullcontext(self.model) as model:
            generated = greedy_generate(model, ids, max_new_tokens)
        return [self.tokenizer.decode(seq) for seq in generated]

    def check(
        self,
        record: GenerationEditRecord | dict[str, Any],
        languages: Sequence[str] | None = None,
        *,
        base: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """Whether the model produces the record's targets, per language.

        Args:
            record: The edit record.
            languages: Languages to check (default: every language of the record).
            base: Check the model with its adapter disabled.

        Returns:
            Language -> ``{"teacher_forced": bool, "generated": bool, "token_accuracy": float, "output": str}``:
            the target is the argmax at every target position; greedy generation of as many tokens produces it;
            the share of target tokens that are the argmax; the greedy generation, decoded.
        """
        if isinstance(record, dict):
            record = GenerationEditRecord.from_dict(record)
        languages = list(record.prompt) if languages is None else [lang for lang in languages if lang in record.prompt]
        encoded = [self.collator.encode_record(record, lang) for lang in languages]
        return self._check_encoded(languages, encoded, base=base)

    def _check_encoded(self, keys: Sequence[str], encoded: Sequence[EncodedEdit], *, base: bool = False) -> dict:
        with self.strategy.unedited() if base else contextlib.nullcontext(self.model) as model:
            forced = teacher_forced_predictions(model, encoded, self.pad_id)
            generated = [greedy_generate(model, [e.prompt_ids], len(e.target_ids))[0] for e in encoded]
        out = {}
        for key, enc, tf_ids, gen_ids in zip(keys, encoded, forced, generated):
            out[key] = {
                "teacher_forced": tf_ids == enc.target_ids,
                "generated": gen_ids == enc.target_ids,
                "token_accuracy": token_accuracy(tf_ids, enc.target_ids),
                "output": self.tokenizer.decode(gen_ids),
            }
        return out

    def evaluate(
        self, records: Iterable[GenerationEditRecord | dict[str, Any]], *, base: bool = False, rephrases: bool = True
    ) -> list[dict[str, Any]]:
        """Check records in every language they have, and their rephrased prompts.

        Returns:
            Per record ``{"id", "prompts": {lang: check}, "rephrases": {lang: [check, ...]}}`` with the dicts of
            :meth:`check`; feed a list before and after the edits to
            `peft_mpn.generation_metrics.summarize_generation`.
        """
        out = []
        for record in records:
            if isinstance(record, dict):
                record = GenerationEditRecord.from_dict(record)
            entry: dict[str, Any] = {"id": record.id, "prompts": self.check(record, base=base), "rephrases": {}}
            if rephrases:
                for lang, prompts in record.rephrases.items():
                    encoded = [
                        self.collator.encode(p, record.target[lang], record_id=record.id, lang=lang) for p in prompts
                    ]
                    checks = self._check_encoded([str(i) for i in range(len(prompts))], encoded, base=base)
                    entry["rephrases"][lang] = [checks[str(i)] for i in range(len(prompts))]
            out.append(entry)
        return out

    def locality(self, prompts: Sequence[str], max_new_tokens: int = 8) -> dict[str, Any]:
        """Token agreement with the unedited model (adapter disabled, FT-L's original weights) on unrelated prompts.

        The base model's greedy continuation of each prompt is the reference; the edited model reads the prompt and
        that continuation (teacher forcing) and predicts each continuation token. See
        `peft_mpn.generation_metrics.token_agreement` for the figures.
        """
        prompt_ids = [self.collator.text_ids(p) for p in prompts]
        with self.strategy.unedited() as base:
            reference = greedy_generate(base, prompt_ids, max_new_tokens)
        encoded = [EncodedEdit(p, r) for p, r in zip(prompt_ids, reference) if r]
        predicted = teacher_forced_predictions(self.model, encoded, self.pad_id)
        return token_agreement([e.target_ids for e in encoded], predicted)

    # ------------------------------------------------------------------ one edit
    def _edit(self, record: GenerationEditRecord, start: float) -> GenerationEditResult:
        """Add, train and freeze the patch of ``record`` (see `Editor.edit`); the baselines train their weights.

        A record whose targets the model already produces in every training language is returned as skipped,
        without a patch.
        """
        rows = self._begin(record)
        if rows is None:
            checks = self._check_encoded(
                self.languages, [self.collator.encode_record(record, lang) for lang in self.languages]
            )
            return self._result(record, checks, start, skipped=True)
        steps, stats = self._train(rows)
        n = int(self.strategy.parts["key"].bank(self.adapter_name).sizes[-1]) if self.uses_patch else 0
        self.strategy.end()
        self._replay = None
        self.model.eval()
        checks = self._check_encoded(self.languages, [rows[lang].encoded for lang in self.languages])
        return self._result(record, checks, start, steps=steps, stats=stats, neurons=n)

    def _result(
        self,
        record: GenerationEditRecord,
        checks: dict,
        start: float,
        *,
        skipped: bool = False,
        steps: int = 0,
        stats: StepStats | None = None,
        neurons: int = 0,
    ) -> GenerationEditResult:
        correct = {lang: c["teacher_forced"] for lang, c in checks.items()}
        generated = {lang: c["generated"] for lang, c in checks.items()}
        return GenerationEditResult(
            id=record.id,
            success=correct.get("en", False) and generated.get("en", False),
            skipped=skipped,
            steps=steps,
            seconds=time.perf_counter() - start,
            neurons=neurons,
            correct=correct,
            generated=generated,
            outputs={lang: c["output"] for lang, c in checks.items()},
            method=self.method,
            **self._stats_fields(stats),
        )

    def _begin(self, record: GenerationEditRecord) -> dict[str, _LanguageRows] | None:
        """Find the wrong target tokens, add the patch (keys at their FFN inputs), cache states; None if all right."""
        encoded = {lang: self.collator.encode_record(record, lang) for lang in self.languages}
        sequences = [e.ids for e in encoded.values()]
        forced = teacher_forced_predictions(self.model, list(encoded.values()), self.pad_id)
        wrong = {
            lang: [j for j, (p, t) in enumerate(zip(pred, e.target_ids)) if p != t]
            for (lang, e), pred in zip(encoded.items(), forced)
        }
        n = min(max(len(w) for w in wrong.values()), self.max_neurons)
        if n == 0:
            return None
        assigned = {lang: assign_neurons(w, n) for lang, w in wrong.items()}
        if self.split_spellings:
            tokens = {lang: [encoded[lang].target_ids[j] for j in w] for lang, w in wrong.items()}
            assigned, n = split_by_spelling(assigned, tokens, self.max_neurons)
        if self.suffix is not None:
            self._sync_memory()
            states = self.suffix.capture(sequences, self.pad_id)
            hidden = states.x
            self._states = states if isinstance(self.suffix, LMLayerSuffix) else None
        else:
            ids, mask = pad_right(sequences, self.pad_id)
            device = model_device(self.model)
            hidden = capture_inputs(self.model, self.strategy.key_module, ids.to(device), mask.to(device)).hidden
        rows: dict[str, _LanguageRows] = {}
        for row, (lang, enc) in enumerate(encoded.items()):
            at = torch.tensor(enc.target_positions, device=hidden.device)
            rows[lang] = _LanguageRows(
                encoded=enc,
                target=torch.tensor(enc.target_ids, device=hidden.device),
                positions=torch.tensor(wrong[lang], dtype=torch.long, device=hidden.device),
                neurons=torch.tensor(assigned[lang], dtype=torch.long, device=hidden.device),
                x=hidden[row, at],
                row=row,
                z=states.z[row, at] if self.suffix is not None and states.z is not None else None,
                m=states.m[row, at] if self.suffix is not None and states.m is not None else None,
            )
        check_finite_input(hidden, record.id)
        if not self.uses_patch:  # FT-L, LoRA: no patch; train the MLP's weights (or LoRA factors)
            self._params = self.strategy.begin(record.id, hidden[0, 0], self.config)
            if self.suffix is not None and not self._verified:
                self._verify_fast_path(rows)
            self._replay = self._replay_set(record)
            return rows
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + zlib.crc32(record.id.encode()))
        keys, biases = self._initial_keys(rows, n, generator)
        width = self.strategy.parts["value"].out_features
        value = torch.randn(n, width, generator=generator) * self.config.value_init_std / width**0.5
        self.model.add_patch(n, key=keys, bias=biases, value=value, adapter_name=self.adapter_name, edit_id=record.id)
        if self.suffix is not None and not self._verified:
            self._verify_fast_path(rows)
        roles = ROLES if self.train_key else ("value",)
        self._params = self.model.patch_parameters(self.adapter_name, newest_only=True, roles=roles)
        return rows

    def _initial_keys(
        self, rows: dict[str, _LanguageRows], n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The new patch's ``(keys (n, d), biases (n,))``: each neuron's first input (``h / |h|^2``, bias 0), or with
        ``key_init="fit"`` a key fitted on all of its inputs against (up to 8,192 of) the memory's."""
        inputs = []
        for i in range(n):  # each neuron's inputs, the first language (English first) that has it first
            inputs.append(
                torch.cat([rows[lang].x[rows[lang].positions[rows[lang].neurons == i]] for lang in self.languages])
            )
        memory = self._memory_x
        if self.key_init == "fit" and (memory is None or not len(memory)):
            if not self._fit_warned:
                logger.warning("key_init='fit' needs the fast path and a memory; starting keys at their inputs")
                self._fit_warned = True
        elif self.key_init == "fit":
            if len(memory) > 8192:
                memory = memory[torch.randperm(len(memory), generator=generator)[:8192].to(memory.device)]
            fitted = [fit_key(x, memory) for x in inputs]
            return torch.stack([k for k, _ in fitted]).cpu(), torch.stack([b for _, b in fitted]).cpu()
        firsts = [x[0].detach().float().cpu() for x in inputs]
        keys = torch.stack([h / h.norm().clamp_min(1e-8) ** 2 for h in firsts])  # T-Patcher: pre-activation 1
        return keys, torch.zeros(n)

    @torch.no_grad()
    def _replay_set(self, record: GenerationEditRecord) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Memory positions a baseline replays during this edit (a sample seeded by the record) and their
        next-token log-probabilities now: ``(x, z, log_probs)``, or ``None`` without replay or memory."""
        n = self.strategy.replay
        if not n:
            return None
        if self.suffix is None:
            if not self._replay_warned:
                logger.warning("BaselineConfig.replay applies on the fast path only; editing without it")
                self._replay_warned = True
            return None
        if self._memory_x is None or not len(self._memory_x):
            return None
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + zlib.crc32(record.id.encode()))
        chosen = torch.randperm(len(self._memory_x), generator=generator)[:n].to(self._memory_x.device)
        x, z = self._memory_x[chosen], self._memory_z[chosen]
        return x, z, torch.log_softmax(self.suffix.mlp_logits(x, z).float(), -1)

    def _fast_logits(self, x: torch.Tensor, z: torch.Tensor, m: torch.Tensor | None):
        """The fast path's logits (and the new patch's pre-activations; ``None`` for the baselines)."""
        if self.uses_patch:
            return self.suffix.logits(x, z, m)
        return self.suffix.mlp_logits(x, z), None

    def _verify_fast_path(self, rows: dict[str, _LanguageRows]) -> None:
        """Compare the fast path's logits with the full model's once; fall back to the full model if they differ.

        The tolerance is 1e-3 of the largest logit, or 4 rounding steps of the logits' dtype if that is coarser: a
        bfloat16 model's logits near 20 come in steps of 0.125, so the same sums in another order differ by
        about 6e-3 relative (Gemma 3 270M), while a missing piece of the architecture differs by far more.
        """
        with torch.no_grad():
            lang = self.languages[0]
            if isinstance(self.suffix, LMLayerSuffix):
                fast_logits = self._layer_logits(rows, [lang])[0][lang]
            else:
                fast_logits, _ = self._fast_logits(rows[lang].x, rows[lang].z, rows[lang].m)
            encoded = rows[lang].encoded
            ids, mask = pad_right([encoded.ids], self.pad_id)
            device = model_device(self.model)
            full = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[0]
            full_logits = full[torch.tensor(encoded.target_positions, device=full.device)]
        scale = max(1.0, float(full_logits.abs().max()))
        error = float((fast_logits.float() - full_logits.float()).abs().max()) / scale
        # Rounding alone: a bfloat16 model's two paths differ by a few units of its precision (eps 7.8e-3; seen up
        # to 6.6e-3 on Gemma 3's shape), a model that the suffix does not describe by far more.
        tolerance = max(1e-3, 4 * torch.finfo(full_logits.dtype).eps)
        if error > tolerance:
            if self._fast_requested:
                raise FastPathUnsupported(
                    f"the generation fast path disagrees with the full model (relative error {error:.2e} > "
                    f"{tolerance:.1e}); this "
                    "architecture does something after its last layer that LMSuffix does not model; pass fast=False."
                )
            logger.warning(
                "fast path disagrees with the full model (%.2e > %.1e); editing through the full model",
                error,
                tolerance,
            )
            self.suffix = None
        self._verified = True

    # ------------------------------------------------------------------ training
    def _train(self, rows: dict[str, _LanguageRows]) -> tuple[int, StepStats | None]:
        return self._optimise(self._params, lambda step: self._step(rows, step))

    def _step(self, rows: dict[str, _LanguageRows], step: int) -> tuple[LossParts, StepStats]:
        weights = self.collator.step_weights(step)
        languages = list(weights)
        if isinstance(self.suffix, LMLayerSuffix):
            logits_by, pre_by = self._layer_logits(rows, languages)
            memory_acts = self._fast_memory_acts(step)
        elif self.suffix is not None:
            x = torch.cat([rows[lang].x for lang in languages])
            z = torch.cat([rows[lang].z for lang in languages])
            m = torch.cat([rows[lang].m for lang in languages]) if rows[languages[0]].m is not None else None
            logits, pre = self._fast_logits(x, z, m)
            sizes = [len(rows[lang].target) for lang in languages]
            logits_by = dict(zip(languages, logits.split(sizes)))
            if not self.uses_patch:
                return self._baseline_losses(rows, weights, logits_by)
            pre_by = dict(zip(languages, pre.split(sizes)))
            memory_acts = self._fast_memory_acts(step)
        else:
            logits_by, pre_by, memory_acts = self._full_forward(rows, languages, step)
            if not self.uses_patch:
                return self._baseline_losses(rows, weights, logits_by)
        return self._losses(rows, weights, logits_by, pre_by, memory_acts)

    def _edit_loss(self, rows, weights, logits_by) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The edit loss over the step's languages, each counting ``weights[lang]`` whatever its target length,
        with the logits and labels it was computed on."""
        logits = torch.cat([logits_by[lang] for lang in weights])
        labels = torch.cat([rows[lang].target for lang in weights])
        token_w = torch.cat(
            [torch.full((len(rows[lang].target),), w / len(rows[lang].target)) for lang, w in weights.items()]
        )
        return edit_loss(logits, labels, token_w.to(logits.device)), logits, labels

    def _baseline_losses(self, rows, weights, logits_by) -> tuple[LossParts, StepStats]:
        """FT-L's and LoRA's loss: the edit loss, plus the KL of the replayed memory positions to their
        distributions before the edit (``BaselineConfig.replay``, ``replay_weight``)."""
        e, logits, labels = self._edit_loss(rows, weights, logits_by)
        zero = e.new_zeros(())
        parts = LossParts(e, e, zero, zero)
        if self._replay is not None:
            x, z, target = self._replay
            current = torch.log_softmax(self.suffix.mlp_logits(x, z).float(), -1)
            replay = torch.nn.functional.kl_div(current, target, reduction="batchmean", log_target=True)
            parts = LossParts(e + self.strategy.baseline.replay_weight * replay, e, zero, replay)
        return parts, stats_of(parts, logits, labels, None, None)

    def _layer_logits(
        self, rows: dict[str, _LanguageRows], languages: list[str]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The layer fast path: logits and the new patch's pre-activations at each language's target positions."""
        at = [rows[lang].encoded.target_positions for lang in languages]
        logits, pre = self.suffix.run(self._states, [rows[lang].row for lang in languages], at)
        return dict(zip(languages, logits)), dict(zip(languages, pre))

    def _fast_memory_acts(self, step: int) -> torch.Tensor:
        patch_bias = self.suffix.newest()["bias"]
        if self._memory_x is None or self._memory_x.numel() == 0:
            return patch_bias.new_zeros(0, patch_bias.shape[0])
        x = self._memory_x
        chosen = self.collator.memory_indices(step, self._memory_count)
        if len(chosen) < self._memory_count:
            x = x[torch.isin(self._memory_owner, torch.tensor(chosen, device=x.device))]
        return self.suffix.pre_activations(x)

    def _full_forward(self, rows: dict[str, _LanguageRows], languages: list[str], step: int):
        if not self.uses_patch:  # the baselines: the edit rows only
            ids, mask = pad_right([rows[lang].encoded.ids for lang in languages], self.pad_id)
            device = model_device(self.model)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logits_by = {
                lang: logits[row, torch.tensor(rows[lang].encoded.target_positions, device=logits.device)]
                for row, lang in enumerate(languages)
            }
            return logits_by, None, None
        memory = [self.collator.memory[i] for i in self.collator.memory_indices(step)]
        sequences = [rows[lang].encoded.ids for lang in languages] + [self.collator.text_ids(t) for t in memory]
        ids, mask = pad_right(sequences, self.pad_id)
        device = model_device(self.model)
        n_new = int(self.strategy.parts["key"].bank(self.adapter_name).sizes[-1])
        with self.model.capture_activations(self.adapter_name) as captured:
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        pre = captured[self.strategy.block][..., -n_new:]
        logits_by, pre_by = {}, {}
        for row, lang in enumerate(languages):
            at = torch.tensor(rows[lang].encoded.target_positions, device=logits.device)
            logits_by[lang] = logits[row, at]
            pre_by[lang] = pre[row, at]
        memory_mask = mask[len(languages) :].bool().to(pre.device)
        memory_acts = pre[len(languages) :][memory_mask]
        return logits_by, pre_by, memory_acts

    def _losses(self, rows, weights, logits_by, pre_by, memory_acts) -> tuple[LossParts, StepStats]:
        """Transformer-Patcher's loss over the step's languages; per-token weights make each language count
        ``weights[lang]`` times, whatever its target length."""
        acts, act_w = [], []
        for lang, weight in weights.items():
            r = rows[lang]
            if r.positions.numel():
                acts.append(pre_by[lang][r.positions, r.neurons])
                act_w.append(torch.full((r.positions.numel(),), weight / r.positions.numel()))
        e, logits_all, labels_all = self._edit_loss(rows, weights, logits_by)
        memory_acts = memory_acts.reshape(-1)
        if acts:
            edit_acts = torch.cat(acts)
            a = activation_loss(edit_acts, self.config.activation_top_k, torch.cat(act_w).to(edit_acts.device))
            hard = memory_acts
            if self.memory_hard_k is not None and hard.numel() > self.memory_hard_k:
                hard = hard.topk(self.memory_hard_k).values  # the most active memory positions
            m = memory_loss(
                hard, edit_acts, self.config.memory_threshold, self.config.gap_margin, self.config.memory_top_k
            )
        else:  # only languages without wrong tokens in this step: keep the edit right and the memory silent
            edit_acts = e.new_zeros(0)
            a = e.new_zeros(())
            below = torch.relu(memory_acts - self.config.memory_threshold)
            m = below.mean() if below.numel() else e.new_zeros(())
        parts = LossParts(e + self.config.activation_weight * a + self.config.memory_weight * m, e, a, m)
        return parts, stats_of(parts, logits_all, labels_all, edit_acts, memory_acts)

    def initial_losses(self, record: GenerationEditRecord | dict[str, Any]) -> dict[str, float]:
        """The loss parts of step 0 of an edit of ``record``, leaving the model unchanged (fast and full agree)."""
        record = self._record(record)
        self.model.eval()
        rows = self._begin(record)
        if rows is None:
            raise ValueError(f"edit record {record.id!r}: the model already produces every target; nothing to edit.")
        try:
            with torch.no_grad():
                parts, _ = self._step(rows, 0)
        finally:
            self.strategy.abort()
            self._replay = None
        return parts.as_floats()

    # ------------------------------------------------------------------ streams
    def is_correct(self, record: GenerationEditRecord) -> bool:
        """Whether every training language's target is already the argmax under teacher forcing."""
        encoded = [self.collator.encode_record(record, lang) for lang in self.languages]
        forced = teacher_forced_predictions(self.model, encoded, self.pad_id)
        return all(p == e.target_ids for p, e in zip(forced, encoded))
