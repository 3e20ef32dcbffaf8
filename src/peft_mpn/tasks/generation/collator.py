"""`GenerationEditCollator`: one generation edit record -> token ids, and one training batch for causal or seq2seq LMs.

A generation edit is trained on the ids of the prompt followed by the ids of the target, and a greedy generation from
the prompt ids is compared with the target ids. The target ids are the ids the tokenizer gives ``prompt + target``
beyond those of the prompt, so a word after a space gets the token it has in running text, with byte-level BPE
(GPT-2, Qwen2: ``" Rome"``) and SentencePiece (LLaMA-2, Mistral: ``"▁Rome"``) alike. Where the tokenizer merges
across the boundary, the target is tokenised on its own.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ...data.aliases import code_switch_language, code_switched_inputs
from ...data.generation import GenerationEditRecord
from ...editing.collator import EditCollator


ModelKind = Literal["causal", "seq2seq"]


@dataclass
class EncodedEdit:
    """The token ids of one prompt and its target.

    Attributes:
        prompt_ids: Ids of the prompt, with the tokenizer's leading special tokens (e.g. BOS).
        target_ids: Ids of the target alone.
    """

    prompt_ids: list[int]
    target_ids: list[int]

    @property
    def ids(self) -> list[int]:
        """Prompt and target ids: the teacher-forced sequence of a causal LM."""
        return self.prompt_ids + self.target_ids

    @property
    def target_positions(self) -> list[int]:
        """Positions in :attr:`ids` whose next-token logits predict the target tokens, in order."""
        start = len(self.prompt_ids) - 1
        return list(range(start, start + len(self.target_ids)))


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, fill: int | None = None) -> tuple[torch.Tensor, ...]:
    """Right-pad id lists into ``(ids, attention_mask)``; with ``fill`` also a copy padded with ``fill``."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    if fill is None:
        return ids, mask
    filled = ids.masked_fill(mask == 0, fill)
    return ids, mask, filled


class GenerationEditCollator(EditCollator):
    """Turns generation edit records into token ids and training batches.

    For a causal LM each edit row is the prompt followed by the target, with ``labels`` (Hugging Face convention:
    aligned with ``input_ids``, ``-100`` where there is no loss) on the target tokens only; memory rows are unrelated
    texts with no labels, read at every position. For a seq2seq LM the prompt is the encoder input and the target
    the decoder's labels; memory texts go to both sides, so that the decoder's FFN sees them.

    Rows are not repeated: each language of a step appears once, and ``row_weights`` says how often it counts
    (English ``edit_repeat`` times, as Transformer-Patcher repeats its edit example).

    Args:
        tokenizer: A Hugging Face tokenizer.
        languages: Training languages; English is always included.
        memory: Unrelated texts for the memory loss.
        kind: ``"causal"`` (decoder-only LMs) or ``"seq2seq"`` (encoder-decoder LMs).
        decoder_start_token_id: For ``kind="seq2seq"``, the model's ``config.decoder_start_token_id``.
        aliases: An alias table ``{entity: {lang: name}}`` (see `peft_mpn.data.aliases`), for ``code_switch``.
        code_switch: Languages of code-switched training examples: for each ``lang``, the English prompt with every
            entity name of ``aliases`` written in ``lang`` and the English target, as the pseudo-language
            ``"en>lang"`` (after the real training languages; it joins the memory after the edit like them).
        code_switch_memory: With ``code_switch``, also add a code-switched copy of every memory text that names an
            entity of ``aliases`` (the languages taken in turn), so that the patch learns to stay silent on
            unrelated text with those names too.
        **options: ``sampling``, ``k``, ``weights``, ``edit_repeat``, ``memory_batch_size``, ``max_length`` and
            ``seed``, as for `MultilingualEditCollator`. An edit longer than ``max_length`` tokens is an error;
            memory texts are truncated.

    Example:
        >>> collator = GenerationEditCollator(tokenizer, ["en", "fr"], memory=["Water boils at"])  # doctest: +SKIP
        >>> batch = collator.build(record)  # doctest: +SKIP
        >>> batch["languages"], batch["row_weights"].tolist()  # doctest: +SKIP
        (['en', 'fr'], [8.0, 1.0])
    """

    def __init__(
        self,
        tokenizer: Any,
        languages: Sequence[str] = ("en",),
        memory: Sequence[str] | None = None,
        *,
        kind: ModelKind = "causal",
        decoder_start_token_id: int | None = None,
        aliases: Mapping[str, Mapping[str, str]] | None = None,
        code_switch: Sequence[str] = (),
        code_switch_memory: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(tokenizer, languages, memory, **options)
        self.add_code_switch(aliases, code_switch, code_switch_memory)
        if kind not in ("causal", "seq2seq"):
            raise ValueError(f"GenerationEditCollator kind must be 'causal' or 'seq2seq', not {kind!r}.")
        if kind == "seq2seq" and decoder_start_token_id is None:
            raise ValueError(
                "GenerationEditCollator(kind='seq2seq') needs decoder_start_token_id=model.config."
                "decoder_start_token_id, to build the decoder inputs."
            )
        self.kind = kind
        self.decoder_start_token_id = decoder_start_token_id
        self.positions: int | None = None  # the model's position limit, set by the editor (None: no limit known)
        self.prefix_ids = leading_special_ids(tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    # ------------------------------------------------------------------ ids
    record_field = "prompt"
    translations = "the translations (prompt and target)"

    def expand(self, record: GenerationEditRecord) -> GenerationEditRecord:
        """The record with its code-switched prompts (``"en>lang"``: the English prompt with its names in ``lang``,
        or the English prompt where it names no entity of the table) and their target, the English one; itself
        without ``code_switch`` or when it has them already. The record passed in is not changed."""
        missing = [lang for lang in self.code_switch if code_switch_language(lang) not in record.prompt]
        if not missing or "en" not in record.prompt or "en" not in record.target:
            return record
        prompt = {**record.prompt, **code_switched_inputs(record.prompt, self.aliases, missing)}
        target = {**record.target, **{code_switch_language(lang): record.target["en"] for lang in missing}}
        return dataclasses.replace(record, prompt=prompt, target=target)

    def check(self, record: GenerationEditRecord) -> None:
        """Raise if ``record`` is not a generation record or lacks a training language."""
        if not isinstance(record, GenerationEditRecord):
            raise TypeError(
                f"expected a GenerationEditRecord (prompt + target), got {type(record).__name__}; build it with "
                "GenerationEditRecord.from_dict or read_generation_records."
            )
        super().check(record)

    def text_ids(self, text: str) -> list[int]:
        """Ids of a text as a causal LM reads it: the tokenizer's leading special tokens, then the text."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return (self.prefix_ids + list(ids))[: min(self.max_length, self.positions or self.max_length)]

    def encode(self, prompt: str, target: str, *, record_id: str = "?", lang: str = "en") -> EncodedEdit:
        """Token ids of ``prompt`` and ``target``.

        Raises:
            ValueError: If the target has no tokens or only unknown tokens, or prompt and target together exceed
                ``max_length`` or the model's positions.
        """
        body = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        joint = list(self.tokenizer(prompt + target, add_special_tokens=False)["input_ids"])
        if joint[: len(body)] == body and len(joint) > len(body):
            target_ids = joint[len(body) :]
        else:  # the tokenizer merges across the boundary: the target alone
            target_ids = list(self.tokenizer(target, add_special_tokens=False)["input_ids"])
        prompt_ids = self.prefix_ids + body
        if not target_ids:
            raise ValueError(f"edit record {record_id!r}: field 'target' for {lang!r} tokenises to no tokens.")
        if not prompt_ids:
            raise ValueError(
                f"edit record {record_id!r}: field 'prompt' for {lang!r} tokenises to no tokens, and the tokenizer "
                "adds no BOS token; a causal LM needs at least one token before the target."
            )
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is not None and all(t == unk for t in target_ids):
            raise ValueError(
                f"edit record {record_id!r}: field 'target' for {lang!r} ({target!r}) tokenises to unknown tokens "
                f"only ({self.tokenizer.unk_token!r}): the tokenizer can't write it, so an edit could not be checked. "
                "Use a target in the tokenizer's alphabet, or a tokenizer that covers it."
            )
        total = len(prompt_ids) + len(target_ids)
        if total > self.max_length:
            raise ValueError(
                f"edit record {record_id!r}: prompt and target in {lang!r} are {total} "
                f"tokens, more than max_length={self.max_length}; shorten them or raise max_length."
            )
        if self.positions is not None and total > self.positions:
            raise ValueError(
                f"edit record {record_id!r}: prompt and target in {lang!r} are {total} tokens, more than the "
                f"model's {self.positions} positions; shorten them."
            )
        return EncodedEdit(prompt_ids, target_ids)

    def encode_record(self, record: GenerationEditRecord, lang: str) -> EncodedEdit:
        """Token ids of the record's prompt and target in ``lang``."""
        return self.encode(record.prompt[lang], record.target[lang], record_id=record.id, lang=lang)

    # ------------------------------------------------------------------ batches
    def step_weights(self, step: int) -> dict[str, float]:
        """Languages of step ``step`` and how often each counts (English: ``edit_repeat``), in training order."""
        counts = Counter(self.step_languages(step))
        return {lang: float(counts[lang]) for lang in self.languages if lang in counts}

    def build(self, record: GenerationEditRecord | dict[str, Any], step: int = 0) -> dict[str, Any]:
        """The batch of one step: one edit row per sampled language, then the memory rows.

        Returns:
            For ``kind="causal"``: ``input_ids``, ``attention_mask``, ``labels`` (target tokens only),
            ``edit_mask`` (bool per row), ``languages`` (per edit row) and ``row_weights`` (per edit row). For
            ``kind="seq2seq"`` also ``decoder_input_ids`` and ``decoder_attention_mask``; ``labels`` are the
            decoder targets (memory rows: ``-100``).
        """
        if isinstance(record, dict):
            record = GenerationEditRecord.from_dict(record)
        record = self.expand(record)
        self.check(record)
        weights = self.step_weights(step)
        languages = list(weights)
        memory = [self.memory[i] for i in self.memory_indices(step)]
        encoded = [self.encode_record(record, lang) for lang in languages]
        n_edit, n_rows = len(encoded), len(encoded) + len(memory)
        edit_mask = torch.zeros(n_rows, dtype=torch.bool)
        edit_mask[:n_edit] = True
        extra = {"edit_mask": edit_mask, "languages": languages, "row_weights": torch.tensor(list(weights.values()))}
        if self.kind == "causal":
            ids, mask = pad_right([e.ids for e in encoded] + [self.text_ids(t) for t in memory], self.pad_id)
            labels = torch.full_like(ids, -100)
            for row, e in enumerate(encoded):
                start = len(e.prompt_ids)
                labels[row, start : start + len(e.target_ids)] = torch.tensor(e.target_ids)
            return {"input_ids": ids, "attention_mask": mask, "labels": labels, **extra}
        return {**self._seq2seq(record, languages, memory), **extra}

    def _seq2seq(self, record: GenerationEditRecord, languages: list[str], memory: list[str]) -> dict[str, Any]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        sources, targets = [], []
        for lang in languages:
            source = self.tokenizer(record.prompt[lang], truncation=True, max_length=self.max_length)["input_ids"]
            target = list(self.tokenizer(record.target[lang], add_special_tokens=False)["input_ids"])
            sources.append(list(source))
            targets.append((target + ([eos] if eos is not None else []))[: self.max_length])
        for text in memory:
            ids = list(self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])
            sources.append(ids)
            targets.append(ids)
        input_ids, attention_mask = pad_right(sources, self.pad_id)
        decoder_inputs = [[self.decoder_start_token_id, *t[:-1]] for t in targets]
        decoder_input_ids, decoder_mask = pad_right(decoder_inputs, self.pad_id)
        _, _, labels = pad_right(targets, self.pad_id, fill=-100)
        labels[len(languages) :] = -100  # memory rows: read by the decoder, no loss
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_mask,
            "labels": labels,
        }


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The special tokens a tokenizer puts before a text (LLaMA: ``[bos]``; GPT-2 and Qwen2: none).

    Trailing special tokens (a BERT-style ``[SEP]`` or an appended EOS) are left out: a prompt must end with its
    last word, where the target continues it.
    """
    probe = "a b"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []
