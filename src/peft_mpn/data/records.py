"""The edit-record schema: one fact to fix, in several languages, as one JSON line.

```json
{"id": "fr-capital", "inputs": {"en": "The capital of France is Lyon.", "fr": "La capitale de la France est Lyon."},
 "label": 0, "rephrases": {"en": ["Lyon is the capital city of France."]}, "locality": ["Water boils at 100 C."]}
```
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..utils.io import write_jsonl


LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
FIELDS = ("id", "inputs", "label", "rephrases", "locality", "neighbours", "negatives", "meta")


def _fail(record_id: Any, field_name: str, problem: str) -> ValueError:
    return ValueError(f"edit record {record_id!r}: field {field_name!r} {problem}")


def _check_language(record_id: Any, field_name: str, lang: Any, known: set[str] | None) -> None:
    if not isinstance(lang, str) or not LANGUAGE_CODE.match(lang):
        raise _fail(record_id, field_name, f"has {lang!r}, which is not a language code; use ISO codes like 'en'.")
    if known is not None and lang not in known:
        raise _fail(record_id, field_name, f"has language {lang!r}, which is not one of {sorted(known)}.")


def _text_map(record_id: Any, field_name: str, value: Any, known: set[str] | None) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise _fail(record_id, field_name, "must be a non-empty map from language code to text.")
    for lang, text in value.items():
        _check_language(record_id, field_name, lang, known)
        if not isinstance(text, str) or not text.strip():
            raise _fail(record_id, field_name, f"has an empty or non-text entry for {lang!r}.")
    return dict(value)


def _text_lists(record_id: str, field_name: str, value: Any, known: set[str] | None) -> dict[str, list[str]]:
    """Validate a ``{language: [text, ...]}`` field."""
    value = value or {}
    if not isinstance(value, dict):
        raise _fail(record_id, field_name, "must map language codes to lists of texts.")
    for lang, texts in value.items():
        _check_language(record_id, field_name, lang, known)
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise _fail(record_id, field_name, f"must hold a list of non-empty texts for {lang!r}.")
    return {lang: list(texts) for lang, texts in value.items()}


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
        if not isinstance(data, dict):
            raise TypeError(f"an edit record must be a JSON object, got {type(data).__name__}.")
        record_id = data.get("id")
        if not isinstance(record_id, (str, int)) or isinstance(record_id, bool) or str(record_id) == "":
            raise ValueError(f"edit record {data!r:.80}: field 'id' must be a non-empty string.")
        record_id = str(record_id)
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise _fail(record_id, unknown[0], f"is not part of the schema; allowed fields are {list(FIELDS)}.")
        known = set(languages) if languages is not None else None
        inputs = _text_map(record_id, "inputs", data.get("inputs"), known)
        if "en" not in inputs:
            raise _fail(record_id, "inputs", "needs an English ('en') text: the edit example.")

        label = data.get("label")
        if label is None:
            if require_label:
                raise _fail(record_id, "label", "is missing; classification edits need the class id to edit to.")
        elif isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise _fail(record_id, "label", f"must be a non-negative int class id, got {label!r}.")

        rephrases = _text_lists(record_id, "rephrases", data.get("rephrases"), known)
        negatives = _text_lists(record_id, "negatives", data.get("negatives"), known)

        locality = data.get("locality") or []
        if not isinstance(locality, list) or not all(isinstance(t, str) and t.strip() for t in locality):
            raise _fail(record_id, "locality", "must be a list of non-empty texts.")

        neighbours = data.get("neighbours") or []
        if not isinstance(neighbours, list):
            raise _fail(record_id, "neighbours", "must be a list of {'inputs': {...}, 'label': int}.")
        for item in neighbours:
            if not isinstance(item, dict) or not isinstance(item.get("label"), int):
                raise _fail(record_id, "neighbours", "entries need 'inputs' (language -> text) and an int 'label'.")
            _text_map(record_id, "neighbours", item.get("inputs"), known)

        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise _fail(record_id, "meta", "must be a JSON object.")
        return cls(
            id=record_id,
            inputs=inputs,
            label=label,
            rephrases=rephrases,
            locality=list(locality),
            neighbours=list(neighbours),
            negatives=negatives,
            meta=dict(meta),
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
    path = Path(path)
    records, seen = [], set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg}).") from exc
            try:
                record = EditRecord.from_dict(data, languages=languages, require_label=require_label)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
            if record.id in seen:
                raise ValueError(f"{path}:{number}: edit record {record.id!r}: field 'id' repeats an earlier id.")
            seen.add(record.id)
            records.append(record)
    return records


def write_records(records: Iterable[EditRecord | dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write edit records as JSONL, atomically."""
    return write_jsonl([r.to_dict() if isinstance(r, EditRecord) else r for r in records], path)
