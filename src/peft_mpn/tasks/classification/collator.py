"""`MultilingualEditCollator`: one classification edit record -> one training batch (edit + memory examples)."""

from __future__ import annotations

from typing import Any

import torch

from ...data.records import EditRecord
from ...editing.collator import EditCollator, Sampling, training_languages


__all__ = ["MultilingualEditCollator", "Sampling", "training_languages"]


class MultilingualEditCollator(EditCollator):
    """Builds the batch of one patch-training step from one edit record.

    A batch holds the English edit example repeated ``edit_repeat`` times (as in Transformer-Patcher), the parallel
    examples of the sampled training languages, and the memory examples the patch must stay silent on. With
    ``languages=["en"]`` it builds Transformer-Patcher's batches; with more languages, MPN's.

    Args:
        tokenizer, languages, memory, sampling, k, weights, edit_repeat, memory_batch_size, max_length, seed: As for
            `peft_mpn.editing.collator.EditCollator` (languages, memory and the per-step sampling).

    Example:
        >>> collator = MultilingualEditCollator(tokenizer, ["en", "fr"], memory=["Water is wet."])  # doctest: +SKIP
        >>> batch = collator.build(record, step=0)  # doctest: +SKIP
        >>> batch["languages"]  # doctest: +SKIP
        ['en', 'en', 'en', 'en', 'en', 'en', 'en', 'en', 'fr']
    """

    def build(self, record: EditRecord | dict[str, Any], step: int = 0) -> dict[str, Any]:
        """The batch of one step: edit rows first, then memory rows (sampled memory, then the record's negatives).

        Returns:
            ``input_ids``, ``attention_mask``, ``labels`` (``-100`` on memory rows), ``edit_mask`` (bool per row)
            and ``languages`` (the language of each edit row).
        """
        if isinstance(record, dict):
            record = EditRecord.from_dict(record)
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
