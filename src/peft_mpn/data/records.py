"""The edit-record schema: one fact to fix, in several languages, as one JSON line.

```json
{"id": "fr-capital", "inputs": {"en": "The capital of France is Lyon.", "fr": "La capitale de la France est Lyon."},
 "label": 0, "rephrases": {"en": ["Lyon is the capital city of France."]}, "locality": ["Water boils at 100 C."]}
```
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..utils.checks import is_int
from ..utils.io import write_jsonl
from .validation import field_error, json_object, read_jsonl_records, record_id_of, text_list, text_lists, text_map


FIELDS = ("id", "inputs", "label", "rephrases", "locality", "neighbours", "negatives", "meta")


@dataclass
class EditRecord:
    """One edit: an input in several languages and the label the model should give it.

    Args:
        id: Unique id of the edit.
        inputs: Language code to text; English (``"en"``) is the edit example, the rest are parallel translations.
        label: The class the model should predict (classification edits).
        rephrases: Language code to paraphrases of the input, for monolingual generalisation.
        locality: Unrelated texts whose predictions must not change.
        neighbours: Other claims about the same subject, ``[{"inputs": {lang: text}, "label": int}]``; a patch
            must not fire on them either. Evaluation only: they never reach training.
        negatives: Language code to *hard negatives*: texts close to the edit that its patch must stay silent on,
            such as the same subject with other values ("The capital of France is Madrid."). They join the memory
            for this edit only. Build them from training data, never from evaluation items.
        meta: Free-form information (relation, subject...), kept as is.

    Example:
        >>> rec = EditRecord.from_dict({"id": "fr-capital", "inputs": {"en": "The capital of France is Lyon."},
        ...                             "label": 0})
        >>> rec.languages
        ['en']
    """

    id: str
    inputs: dict[str, str]
    label: int | None = None
    rephrases: dict[str, list[str]] = field(default_factory=dict)
    locality: list[str] = field(default_factory=list)
    neighbours: list[dict[str, Any]] = field(default_factory=list)
    negatives: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        """The languages of :attr:`inputs`, in order."""
        return list(self.inputs)

    def text(self, lang: str) -> str:
        """The input in ``lang`` (the text that joins the memory after the edit)."""
        return self.inputs[lang]

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, languages: Iterable[str] | None = None, require_label: bool = True
    ) -> EditRecord:
        """Validate a dict (one JSONL line) and build a record.

        Args:
            data: The record.
            languages: If given, the known language codes; any other is an error.
            require_label: Classification edits need a ``label``.

        Raises:
            ValueError: Naming the record id and the field, for an unknown or empty field, an unknown language, a
                missing English input or a missing label.
            TypeError: If ``data`` is not a dict.
        """
        record_id = record_id_of(data, FIELDS)
        known = set(languages) if languages is not None else None
        inputs = text_map(record_id, "inputs", data.get("inputs"), known)
        if "en" not in inputs:
            raise field_error(record_id, "inputs", "needs an English ('en') text: the edit example.")

        label = data.get("label")
        if label is None:
            if require_label:
                raise field_error(record_id, "label", "is missing; classification edits need the class id to edit to.")
        elif not is_int(label, least=0):
            raise field_error(record_id, "label", f"must be a non-negative int class id, got {label!r}.")

        rephrases = text_lists(record_id, "rephrases", data.get("rephrases"), known)
        negatives = text_lists(record_id, "negatives", data.get("negatives"), known)
        locality = text_list(record_id, "locality", data.get("locality"))

        neighbours = data.get("neighbours") or []
        if not isinstance(neighbours, list):
            raise field_error(record_id, "neighbours", "must be a list of {'inputs': {...}, 'label': int}.")
        for item in neighbours:
            if not isinstance(item, dict) or not is_int(item.get("label"), least=0):
                message = "entries need 'inputs' (language -> text) and a non-negative int 'label' (a class id)."
                raise field_error(record_id, "neighbours", message)
            text_map(record_id, "neighbours", item.get("inputs"), known)
        return cls(
            id=record_id,
            inputs=inputs,
            label=label,
            rephrases=rephrases,
            locality=locality,
            neighbours=list(neighbours),
            negatives=negatives,
            meta=json_object(record_id, "meta", data.get("meta")),
        )

    def negative_texts(self, languages: Iterable[str]) -> list[str]:
        """The hard negatives of the given languages, in that order."""
        return [text for lang in languages for text in self.negatives.get(lang, [])]

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict, without empty optional fields."""
        data = asdict(self)
        return {k: v for k, v in data.items() if k in ("id", "inputs") or v not in (None, [], {})}


def read_records(
    path: str | os.PathLike, *, languages: Iterable[str] | None = None, require_label: bool = True
) -> list[EditRecord]:
    """Read edit records from a JSONL file (one JSON object per line; blank lines are skipped).

    Raises:
        ValueError: With the file and line number, for bad JSON, a bad record or a duplicate id.
        FileNotFoundError: If the file does not exist.
    """
    return read_jsonl_records(path, partial(EditRecord.from_dict, languages=languages, require_label=require_label))


def write_records(records: Iterable[EditRecord | dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write edit records as JSONL, atomically."""
    return write_jsonl([r.to_dict() if isinstance(r, EditRecord) else r for r in records], path)
