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

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..utils.io import write_jsonl
from .validation import field_error, json_object, read_jsonl_records, record_id_of, text_list, text_lists, text_map


GENERATION_FIELDS = ("id", "prompt", "target", "rephrases", "locality", "meta")
CLASSIFICATION_HINT = " (classification records use 'inputs' and 'label': read them with read_records)"


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
        hints = {"inputs": CLASSIFICATION_HINT, "label": CLASSIFICATION_HINT}
        record_id = record_id_of(data, GENERATION_FIELDS, what="a generation edit record", hints=hints)
        known = set(languages) if languages is not None else None
        if "prompt" not in data:
            raise field_error(record_id, "prompt", "is missing; give a map from language code to prompt text.")
        prompt = text_map(record_id, "prompt", data["prompt"], known)
        if "en" not in prompt:
            raise field_error(record_id, "prompt", "needs an English ('en') prompt: the edit example.")
        if "target" not in data:
            raise field_error(record_id, "target", "is missing; give a map from language code to the new answer text.")
        # Targets keep their leading space (" Lyon"); an empty or blank one is refused.
        target = text_map(record_id, "target", data["target"], known, noun="the new answer text", entry="answer")
        no_target = [lang for lang in prompt if lang not in target]
        if no_target:
            raise field_error(record_id, "target", f"has no answer for prompt languages {no_target}; add them.")
        no_prompt = [lang for lang in target if lang not in prompt]
        if no_prompt:
            problem = f"has answers for {no_prompt}, which have no prompt; add the prompts."
            raise field_error(record_id, "target", problem)

        rephrases = text_lists(record_id, "rephrases", data.get("rephrases"), known, noun="prompts")
        untargeted = [lang for lang in rephrases if lang not in target]
        if untargeted:
            problem = f"has prompts in {untargeted[0]!r}, which has no target; add one."
            raise field_error(record_id, "rephrases", problem)
        locality = text_list(record_id, "locality", data.get("locality"), noun="prompts")
        return cls(record_id, prompt, target, rephrases, locality, json_object(record_id, "meta", data.get("meta")))

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
    return read_jsonl_records(path, partial(GenerationEditRecord.from_dict, languages=languages))


def write_generation_records(
    records: Iterable[GenerationEditRecord | dict[str, Any]], path: str | os.PathLike
) -> Path:
    """Write generation edit records as JSONL, atomically (dicts are validated first)."""
    rows = [
        (r if isinstance(r, GenerationEditRecord) else GenerationEditRecord.from_dict(r)).to_dict() for r in records
    ]
    return write_jsonl(rows, path)
