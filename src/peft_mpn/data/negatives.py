"""Subject-swapped hard negatives: the edit's relation and value said about other subjects.

A patch trained against the usual hard negatives (the same subject with other values: "The currency of Jordan is
the euro.") can separate the edit from them by its *value* alone, and then fires on "The currency of Peru is the
Jordanian dinar." for every country it never saw: after many edits those false fires are most of the lost
locality (docs/benchmark.md, "Why locality falls as edits grow"). A negative the patch cannot separate by the value
is the same relation and value about *other* subjects, which :func:`add_subject_negatives` adds to each record's
``negatives``:

    >>> from peft_mpn.data import EditRecord, add_subject_negatives
    >>> record = EditRecord("JO-currency", {"en": "The currency of Jordan is the euro."}, label=1,
    ...                     meta={"subject": {"en": "Jordan"}})
    >>> out = add_subject_negatives([record], [{"en": "Peru"}, {"en": "Chile"}], k=2)
    >>> sorted(out[0].negatives["en"])
    ['The currency of Chile is the euro.', 'The currency of Peru is the euro.']

Two kinds of records are understood:

- a record with ``meta["subject"]`` (language -> the subject as written in ``inputs[lang]``): each other subject
  (language -> name) replaces it in the text of every language both have;
- a claim of the country-facts benchmark (``meta`` with ``relation``, ``value_key`` and ``country``, as
  :func:`~peft_mpn.data.to_edit_records` writes it): other subjects are ISO 3166-1 alpha-2 codes and the claim is
  rendered about them with the benchmark's templates (:func:`~peft_mpn.data.render_claims`, articles and
  inflections included).

Draw the other subjects from the training data (the subjects of the memory), never from evaluation items: a
negative is a text the patch is trained to stay silent on.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..utils.checks import is_int
from .benchmark import DEFAULT_PREFIX, render_claims
from .countries import load_countries
from .records import EditRecord


def add_subject_negatives(
    records: Iterable[EditRecord | Mapping[str, Any]],
    subjects: Sequence[str | Mapping[str, str]],
    k: int,
    *,
    languages: Sequence[str] | None = None,
    seed: int = 0,
    prefix: str = DEFAULT_PREFIX,
    true_first: int = 0,
) -> list[EditRecord]:
    """Give each record ``k`` subject-swapped hard negatives per language: its claim about ``k`` other subjects.

    Args:
        records: Edit records (or dicts like one JSONL line); each needs ``meta["subject"]`` (language -> the
            subject as written in its inputs) or the benchmark's ``meta`` (``relation``, ``value_key``, ``country``).
        subjects: The pool of other subjects: dicts (language -> name) for ``meta["subject"]`` records, ISO
            3166-1 alpha-2 codes for benchmark claims. A record's own subject is never drawn.
        k: Negatives per record and language (0 returns the records unchanged); a pool smaller than ``k`` gives
            all of it.
        languages: Languages to add negatives in (default: every language of the record's inputs).
        seed: The draw of each record's ``k`` subjects depends only on ``seed`` and the record id.
        prefix: Prepended to rendered benchmark claims (the benchmark's ``"query: "``); unused for text swaps.
        true_first: Benchmark claims: up to this many of the ``k`` subjects are drawn from those whose own value is
            the edit's value (their swapped claim is *true*: "The currency of Greenland is the Danish krone." for an
            edit about DKK), the rest from the others. A random draw finds few of them for a rare value, and a patch
            that learnt to stay silent on false claims with the value still fires on the true ones.

    Returns:
        New records; ``negatives[lang]`` keeps what the record had and gains the swapped texts (a text equal to
        one of the record's inputs or negatives is not added twice).

    Raises:
        ValueError: For ``k`` not an int >= 0, a record with neither kind of ``meta``, a subject of the wrong kind,
            or a ``meta["subject"]`` that its input does not contain.
    """
    if not is_int(k, 0):
        raise ValueError(f"add_subject_negatives: k must be an int >= 0 (negatives per record), got {k!r}.")
    if not is_int(true_first, 0) or true_first > k:
        raise ValueError(f"add_subject_negatives: true_first must be an int in [0, k={k}], got {true_first!r}.")
    out = []
    for item in records:
        record = item if isinstance(item, EditRecord) else EditRecord.from_dict(dict(item))
        negatives = {lang: list(texts) for lang, texts in record.negatives.items()}
        if k:
            langs = [lang for lang in (languages or record.languages) if lang in record.inputs]
            for swapped in _swapped(record, subjects, k, langs, seed, prefix, true_first):
                for lang, text in swapped.items():
                    kept = negatives.setdefault(lang, [])
                    if text not in kept and text != record.inputs.get(lang):
                        kept.append(text)
        out.append(dataclasses.replace(record, negatives=negatives))
    return out


def _swapped(
    record: EditRecord,
    subjects: Sequence[str | Mapping[str, str]],
    k: int,
    languages: Sequence[str],
    seed: int,
    prefix: str,
    true_first: int = 0,
) -> list[dict[str, str]]:
    """The record's claim about ``k`` subjects drawn from ``subjects`` (one dict language -> text per subject)."""
    meta = record.meta
    rng = random.Random(f"{seed}:{record.id}:subjects")
    if isinstance(meta.get("subject"), Mapping):
        own = meta["subject"]
        pool = [s for s in subjects if _check_subject(record, s, dict) != dict(own)]
        texts = []
        for other in rng.sample(pool, min(k, len(pool))):
            swapped = {}
            for lang in languages:
                if lang not in own or lang not in other:
                    continue
                if own[lang] not in record.inputs[lang]:
                    raise ValueError(
                        f"edit record {record.id!r}: meta['subject'][{lang!r}] = {own[lang]!r} is not in its "
                        f"{lang!r} input; give the subject exactly as the input writes it."
                    )
                swapped[lang] = record.inputs[lang].replace(own[lang], other[lang])
            texts.append(swapped)
        return texts
    if all(key in meta for key in ("relation", "value_key", "country")):
        pool = [s for s in subjects if _check_subject(record, s, str) != meta["country"]]
        if true_first:
            facts = {c.iso2: c.facts.get(meta["relation"]) for c in load_countries(languages)}
            holders = [s for s in pool if getattr(facts.get(s), "key", None) == meta["value_key"]]
            chosen = rng.sample(holders, min(true_first, len(holders)))
            rest = [s for s in pool if s not in chosen]
            chosen += rng.sample(rest, min(k - len(chosen), len(rest)))
        else:
            chosen = rng.sample(pool, min(k, len(pool)))
        return render_claims(meta["relation"], meta["value_key"], chosen, languages, prefix=prefix)
    raise ValueError(
        f"edit record {record.id!r}: field 'meta' needs 'subject' (language -> the subject as written in the "
        "inputs) or the benchmark's 'relation', 'value_key' and 'country' to swap its subject."
    )


def _check_subject(record: EditRecord, subject: Any, kind: type) -> Any:
    if kind is dict and isinstance(subject, Mapping):
        return dict(subject)
    if kind is str and isinstance(subject, str):
        return subject
    wanted = "dicts (language -> name)" if kind is dict else "ISO 3166-1 alpha-2 codes"
    raise ValueError(
        f"add_subject_negatives: record {record.id!r} needs subjects as {wanted}, got {type(subject).__name__} "
        f"{subject!r}."
    )


__all__ = ["add_subject_negatives"]
