"""`MultilingualEditCollator`: one classification edit record -> one training batch (edit + memory examples)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...data.aliases import code_switch, code_switch_language, code_switched_inputs, switched_copies
from ...data.records import EditRecord
from ...editing.collator import EditCollator, Sampling, training_languages


__all__ = ["MultilingualEditCollator", "Sampling", "switched_copies", "training_languages"]


class MultilingualEditCollator(EditCollator):
    """Builds the batch of one patch-training step from one edit record.

    A batch holds the English edit example repeated ``edit_repeat`` times (as in Transformer-Patcher), the parallel
    examples of the sampled training languages, and the memory examples the patch must stay silent on. With
    ``languages=["en"]`` it builds Transformer-Patcher's batches; with more languages, MPN's.

    Args:
        tokenizer, languages, memory, sampling, k, weights, edit_repeat, memory_batch_size, max_length, seed: As for
            `peft_mpn.editing.collator.EditCollator` (languages, memory and the per-step sampling).
        aliases: An alias table ``{entity: {lang: name}}`` (see `peft_mpn.data.aliases`), for ``code_switch``.
        code_switch: Languages whose entity names make code-switched training examples: for each ``lang``, the
            English edit example (and its English hard negatives) with every entity name of ``aliases`` written in
            ``lang``, as the pseudo-language ``"en>lang"``. They join the training languages (after the real ones),
            so they are trained on like translations and join the memory after the edit. They teach the patch's key
            that the script of the names does not matter (``docs/concepts.md``). Empty: none.
        code_switch_memory: With ``code_switch``, also add a code-switched copy of every memory text that names an
            entity of ``aliases`` (the languages taken in turn), so that the key learns to stay silent on unrelated
            text with foreign names too, not only to fire on the edit's. Without it a patch trained on an English
            memory fires on unrelated claims whose names are foreign (measured: docs/benchmark.md).

    Example:
        >>> collator = MultilingualEditCollator(tokenizer, ["en", "fr"], memory=["Water is wet."])  # doctest: +SKIP
        >>> batch = collator.build(record, step=0)  # doctest: +SKIP
        >>> batch["languages"]  # doctest: +SKIP
        ['en', 'en', 'en', 'en', 'en', 'en', 'en', 'en', 'fr']
    """

    def __init__(
        self,
        tokenizer: Any,
        languages: Sequence[str] = ("en",),
        memory: Sequence[str] | None = None,
        *,
        aliases: Mapping[str, Mapping[str, str]] | None = None,
        code_switch: Sequence[str] = (),
        code_switch_memory: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(tokenizer, languages, memory, **options)
        self.add_code_switch(aliases, code_switch, code_switch_memory)

    def expand(self, record: EditRecord) -> EditRecord:
        """The record with its code-switched inputs and hard negatives (``"en>lang"``); itself without
        ``code_switch``, or when it has them already. The record passed in is not changed."""
        if not self.code_switch or "en" not in record.inputs:
            return record
        missing = [lang for lang in self.code_switch if code_switch_language(lang) not in record.inputs]
        if not missing:
            return record
        inputs = {**record.inputs, **code_switched_inputs(record.inputs, self.aliases, missing)}
        negatives = dict(record.negatives)
        for lang in missing:
            negatives[code_switch_language(lang)] = [
                code_switch(text, self.aliases, lang) or text for text in record.negatives.get("en", [])
            ]
        return dataclasses.replace(record, inputs=inputs, negatives=negatives)

    def build(self, record: EditRecord | dict[str, Any], step: int = 0) -> dict[str, Any]:
        """The batch of one step: edit rows first, then memory rows (sampled memory, then the record's negatives).

        Returns:
            ``input_ids``, ``attention_mask``, ``labels`` (``-100`` on memory rows), ``edit_mask`` (bool per row)
            and ``languages`` (the language of each edit row).
        """
        if isinstance(record, dict):
            record = EditRecord.from_dict(record)
        record = self.expand(record)
        self.check(record)
        if record.label is None:
            raise ValueError(f"edit record {record.id!r}: field 'label' is missing; classification edits need it.")
        languages = self.step_languages(step)
        # Hard negatives of the record (every training language, every step) join the sampled memory.
        memory = [self.memory[i] for i in self.memory_indices(step)] + record.negative_texts(self.languages)
        batch = self.tokenize([record.inputs[lang] for lang in languages] + memory)
        n_edit = len(languages)
        labels = torch.full((n_edit + len(memory),), -100, dtype=torch.long)
        labels[:n_edit] = record.label
        edit_mask = torch.zeros(n_edit + len(memory), dtype=torch.bool)
        edit_mask[:n_edit] = True
        return {**batch, "labels": labels, "edit_mask": edit_mask, "languages": languages}
