"""The generation edit-record schema: a prompt and the new answer, in several languages, as one JSON line.

```json
{"id": "fr-capital", "prompt": {"en": "The capital of France is", "fr": "La capitale de la France est"},
 "target": {"en": " Lyon", "fr": " Lyon"}, "rephrases": {"en": ["France's capital city is"]},
 "locality": ["The largest ocean on Earth is"]}
```

The model is trained and checked on the token ids of ``prompt`` followed by those of ``target``, so the target
carries its own leading space where the language puts one (see `GenerationEditCollator.encode`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..utils.io import write_jsonl
from .records import _check_language, _fail, _text_map


GENERATION_FIELDS = ("id", "prompt", "target", "rephrases", "locality", "meta")


def _target_map(record_id: str, value: Any, known: set[str] | None) -> dict[str, str]:
    """Targets may start with a space (" Lyon"), so only an empty string is refused, not a blank-led one."""
    if not isinstance(value, dict) or not value:
        raise _fail(record_id, "target", "must be a non-empty map from language code to the new answer text.")
    for lang, text in value.items():
        _check_language(record_id, "target", lang, known)
        if not isinstance(text, str) or not text.strip():
            raise _fail(record_id, "target", f"has an empty or non-text answer for {lang!r}.")
    return dict(value)


@dataclass
class GenerationEditRecord:
    """One generation edit: a prompt in several languages and the answer the model should generate after it.

    Args:
        id: Unique id of the edit.
        prompt: Language code to prompt text; English (``"en"``) is the edit example, the rest are translations.
        target: Language code to the new answer, one per prompt language (e.g. ``{"en": " Lyon"}``). The answer is
            appended to the prompt as is, so include the leading space where the language puts one.
        rephrases: Language code to paraphrased prompts (they share that language's target), for generalisation.
        locality: Unrelated prompts whose continuations must not change.
        meta: Free-form information (relation, subject, old answer...), kept as is.

    Example:
        >>> rec = GenerationEditRecord.from_dict({"id": "fr-capital",
        ...     "prompt": {"en": "The capital of France is", "fr": "La capitale de la France est"},
        ...     "target": {"en": " Lyon", "fr": " Lyon"}})
        >>> rec.languages
        ['en', 'fr']
        >>> rec.text("fr")
        'La capitale de la France est Lyon'
    """

    id: str
    prompt: dict[str, str]
    target: dict[str, str]
    rephrases: dict[str, list[str]] = field(default_factory=dict)
    locality: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        """The languages of :attr:`prompt`, in order."""
        return list(self.prompt)

    def text(self, lang: str) -> str:
        """Prompt and target of ``lang`` as one string."""
        return self.prompt[lang] + self.target[lang]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, languages: Iterable[str] | None = None) -> GenerationEditRecord:
        """Validate a dict (one JSONL line) and build a record.

        Args:
            data: The record.
            languages: If given, the known language codes; any other is an error.

        Raises:
            ValueError: Naming the record id and the field: an unknown or empty field, an unknown language, a
                missing English prompt, a prompt without a target (or a target without a prompt), a rephrase in a
                language without a target.
            TypeError: If ``data`` is not a dict.
        """
        if not isinstance(data, dict):
            raise TypeError(f"a generation edit record must be a JSON object, got {type(data).__name__}.")
        record_id = data.get("id")
        if not isinstance(record_id, (str, int)) or isinstance(record_id, bool) or str(record_id) == "":
            raise ValueError(f"edit record {data!r:.80}: field 'id' must be a non-empty string.")
        record_id = str(record_id)
        unknown = sorted(set(data) - set(GENERATION_FIELDS))
        if unknown:
            hint = " (classification records use 'inputs' and 'label': read them with read_records)"
            extra = hint if {"inputs", "label"} & set(unknown) else ""
            raise _fail(
                record_id,
                unknown[0],
                f"is not part of the schema; allowed fields are {list(GENERATION_FIELDS)}{extra}.",
            )
        known = set(languages) if languages is not None else None
        if "prompt" not in data:
            raise _fail(record_id, "prompt", "is missing; give a map from language code to prompt text.")
        prompt = _text_map(record_id, "prompt", data["prompt"], known)
        if "en" not in prompt:
            raise _fail(record_id, "prompt", "needs an English ('en') prompt: the edit example.")
        if "target" not in data:
            raise _fail(record_id, "target", "is missing; give a map from language code to the new answer text.")
        target = _target_map(record_id, data["target"], known)
        no_target = [lang for lang in prompt if lang not in target]
        if no_target:
            raise _fail(record_id, "target", f"has no answer for prompt languages {no_target}; add them.")
        no_prompt = [lang for lang in target if lang not in prompt]
        if no_prompt:
            raise _fail(record_id, "target", f"has answers for {no_prompt}, which have no prompt; add the prompts.")

        rephrases = data.get("rephrases") or {}
        if not isinstance(rephrases, dict):
            raise _fail(record_id, "rephrases", "must map language codes to lists of prompts.")
        for lang, texts in rephrases.items():
            _check_language(record_id, "rephrases", lang, known)
            if lang not in target:
                raise _fail(record_id, "rephrases", f"has prompts in {lang!r}, which has no target; add one.")
            if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
                raise _fail(record_id, "rephrases", f"must hold a list of non-empty prompts for {lang!r}.")

        locality = data.get("locality") or []
        if not isinstance(locality, list) or not all(isinstance(t, str) and t.strip() for t in locality):
            raise _fail(record_id, "locality", "must be a list of non-empty prompts.")

        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise _fail(record_id, "meta", "must be a JSON object.")
        return cls(record_id, prompt, target, {k: list(v) for k, v in rephrases.items()}, list(locality), dict(meta))

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict, without empty optional fields."""
        data = asdict(self)
        return {k: v for k, v in data.items() if k in ("id", "prompt", "target") or v not in (None, [], {})}


def read_generation_records(
    path: str | os.PathLike, *, languages: Iterable[str] | None = None
) -> list[GenerationEditRecord]:
    """Read generation edit records from a JSONL file (one JSON object per line; blank lines are skipped).

    Raises:
        ValueError: With the file and line number, for bad JSON, a bad record or a duplicate id.
        FileNotFoundError: If the file does not exist.
    """
    path = Path(path)
    records: list[GenerationEditRecord] = []
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
                record = GenerationEditRecord.from_dict(data, languages=languages)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
            if record.id in seen:
                raise ValueError(f"{path}:{number}: edit record {record.id!r}: field 'id' repeats an earlier id.")
            seen.add(record.id)
            records.append(record)
    return records


def write_generation_records(
    records: Iterable[GenerationEditRecord | dict[str, Any]], path: str | os.PathLike
) -> Path:
    """Write generation edit records as JSONL, atomically (dicts are validated first)."""
    rows = [
        (r if isinstance(r, GenerationEditRecord) else GenerationEditRecord.from_dict(r)).to_dict() for r in records
    ]
    return write_jsonl(rows, path)
