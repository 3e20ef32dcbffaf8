"""Checks shared by the edit-record schemas, with errors that name the record and the field, and a JSONL reader.

>>> text_map("fr-capital", "inputs", {"en": "The capital of France is Lyon."}, known=None)
{'en': 'The capital of France is Lyon.'}
>>> text_map("fr-capital", "inputs", {"en": " "}, known=None)
Traceback (most recent call last):
...
ValueError: edit record 'fr-capital': field 'inputs' has an empty or non-text entry for 'en'.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar


LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
RecordT = TypeVar("RecordT")


def field_error(record_id: Any, field_name: str, problem: str) -> ValueError:
    """The error for a bad field: ``edit record 'id': field 'name' <problem>``."""
    return ValueError(f"edit record {record_id!r}: field {field_name!r} {problem}")


def record_id_of(
    data: Any, fields: Collection[str], *, what: str = "an edit record", hints: Mapping[str, str] | None = None
) -> str:
    """Check that ``data`` is a JSON object with a usable id and only the given fields; returns the id as a string.

    Args:
        data: One record, as read from JSON.
        fields: The fields of the schema, in the order the error lists them.
        what: The record type, for the error when ``data`` is not a dict.
        hints: Unknown field -> text appended to its error (e.g. where that field belongs).

    Raises:
        TypeError: If ``data`` is not a dict.
        ValueError: If the id is missing or empty, or a field is not part of the schema.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{what} must be a JSON object, got {type(data).__name__}.")
    record_id = data.get("id")
    if not isinstance(record_id, (str, int)) or isinstance(record_id, bool) or not str(record_id).strip():
        raise ValueError(f"edit record {data!r:.80}: field 'id' must be a non-empty string.")
    record_id = str(record_id)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hint = next((hints[name] for name in unknown if name in hints), "") if hints else ""
        problem = f"is not part of the schema; allowed fields are {list(fields)}{hint}."
        raise field_error(record_id, unknown[0], problem)
    return record_id


def check_language(record_id: Any, field_name: str, lang: Any, known: set[str] | None) -> None:
    """Raise unless ``lang`` is a language code (ISO style, ``"en"``, ``"zh-Hant"``) and, if given, in ``known``."""
    if not isinstance(lang, str) or not LANGUAGE_CODE.match(lang):
        problem = f"has {lang!r}, which is not a language code; use ISO codes like 'en'."
        raise field_error(record_id, field_name, problem)
    if known is not None and lang not in known:
        raise field_error(record_id, field_name, f"has language {lang!r}, which is not one of {sorted(known)}.")


def text_map(
    record_id: Any, field_name: str, value: Any, known: set[str] | None, *, noun: str = "text", entry: str = "entry"
) -> dict[str, str]:
    """Validate a non-empty ``{language: text}`` field; ``noun`` and ``entry`` name its texts in the errors."""
    if not isinstance(value, dict) or not value:
        raise field_error(record_id, field_name, f"must be a non-empty map from language code to {noun}.")
    for lang, text in value.items():
        check_language(record_id, field_name, lang, known)
        if not isinstance(text, str) or not text.strip():
            raise field_error(record_id, field_name, f"has an empty or non-text {entry} for {lang!r}.")
    return dict(value)


def text_list(record_id: Any, field_name: str, value: Any, *, noun: str = "texts") -> list[str]:
    """Validate an optional ``[text, ...]`` field (missing: empty)."""
    value = value or []
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise field_error(record_id, field_name, f"must be a list of non-empty {noun}.")
    return list(value)


def text_lists(
    record_id: Any, field_name: str, value: Any, known: set[str] | None, *, noun: str = "texts"
) -> dict[str, list[str]]:
    """Validate an optional ``{language: [text, ...]}`` field (missing: empty)."""
    value = value or {}
    if not isinstance(value, dict):
        raise field_error(record_id, field_name, f"must map language codes to lists of {noun}.")
    for lang, texts in value.items():
        check_language(record_id, field_name, lang, known)
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise field_error(record_id, field_name, f"must hold a list of non-empty {noun} for {lang!r}.")
    return {lang: list(texts) for lang, texts in value.items()}


def json_object(record_id: Any, field_name: str, value: Any) -> dict[str, Any]:
    """Validate an optional free-form JSON object field (missing: empty)."""
    value = value or {}
    if not isinstance(value, dict):
        raise field_error(record_id, field_name, "must be a JSON object.")
    return dict(value)


def read_jsonl_records(path: str | os.PathLike, parse: Callable[[Any], RecordT]) -> list[RecordT]:
    """Read records from a JSONL file (one JSON object per line; blank lines are skipped).

    Args:
        path: The file.
        parse: Builds one record (with an ``id``) from one line's value; raises ``ValueError`` or ``TypeError``.

    Raises:
        ValueError: With the file and line number, for bad JSON, a bad record or a duplicate id.
        FileNotFoundError: If the file does not exist.
    """
    path = Path(path)
    records: list[RecordT] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg}).") from exc
            try:
                record = parse(data)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
            if record.id in seen:
                raise ValueError(f"{path}:{number}: edit record {record.id!r}: field 'id' repeats an earlier id.")
            seen.add(record.id)
            records.append(record)
    return records
