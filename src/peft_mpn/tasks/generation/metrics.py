"""Metrics of generation edits, as pure functions over token ids and the checks `CausalLMEditor` makes.

- **Efficacy**: right after the edit, the target tokens are the argmax under teacher forcing, and greedy generation
  from the prompt produces the target (``GenerationEditResult.success`` requires both, in English).
- **Cross-lingual generalisation**: the same two checks on the translated prompts, per language, reported as ``all``
  (share right after the edits) and ``fixed`` (share among the translations that were wrong before), as for
  classification edits (`peft_mpn.metrics.generalization`).
- **Locality**: token agreement with the base model on unrelated prompts. The base model's greedy continuation is
  the reference; the edited model reads the prompt and that continuation and predicts each of its tokens.

Example:
    >>> token_agreement([[5, 6, 7], [8, 9]], [[5, 6, 1], [8, 9]])["agreement"]
    0.8
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...editing.metrics import NAN, _field, generalization, seconds_per_edit


__all__ = [
    "cross_lingual_generalization",
    "efficacy",
    "rephrase_generalization",
    "summarize_generation",
    "token_accuracy",
    "token_agreement",
]

CHECKS = ("teacher_forced", "generated")


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Share of target tokens predicted at their position (``nan`` for an empty target).

    Example:
        >>> token_accuracy([3, 4, 9], [3, 4, 5])
        0.6666666666666666
    """
    if len(predicted) != len(target):
        raise ValueError(f"token_accuracy: {len(predicted)} predicted tokens for a target of {len(target)}.")
    if not target:
        return NAN
    return sum(int(p == t) for p, t in zip(predicted, target)) / len(target)


def token_agreement(reference: Sequence[Sequence[int]], predicted: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Token-level agreement of an edited model with a reference (the base model) on unrelated prompts.

    Args:
        reference: Per prompt, the reference tokens (the base model's greedy continuation).
        predicted: Per prompt, the edited model's argmax at each of those positions (teacher forcing on the
            reference), as long as the reference.

    Returns:
        ``{"agreement", "exact", "n_tokens", "n_prompts", "changed_tokens"}``: the share of tokens that agree
        (pooled over prompts), the share of prompts whose every token agrees, the counts, and the number of tokens
        that differ. Rates over nothing are ``nan``.

    Raises:
        ValueError: If the lists are not aligned.
    """
    if len(reference) != len(predicted):
        raise ValueError(f"token_agreement: {len(reference)} reference sequences but {len(predicted)} predicted.")
    agree = total = exact = 0
    for i, (ref, pred) in enumerate(zip(reference, predicted)):
        if len(ref) != len(pred):
            raise ValueError(
                f"token_agreement: sequence {i} has {len(ref)} reference tokens but {len(pred)} predicted."
            )
        hits = sum(int(a == b) for a, b in zip(ref, pred))
        agree += hits
        total += len(ref)
        exact += int(hits == len(ref))
    return {
        "agreement": agree / total if total else NAN,
        "exact": exact / len(reference) if reference else NAN,
        "n_tokens": total,
        "n_prompts": len(reference),
        "changed_tokens": total - agree,
    }


def _check_key(key: str) -> None:
    if key not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS} (teacher forcing or greedy generation), not {key!r}.")


def efficacy(evals: Sequence[Mapping[str, Any]], language: str = "en") -> dict[str, Any]:
    """Efficacy of edits in one language, from `CausalLMEditor.evaluate` output taken after the edits.

    Returns:
        ``{"teacher_forced", "generated", "token_accuracy", "n"}``: the share of records whose target is the argmax
        under teacher forcing, the share whose greedy generation is the target, the mean token accuracy, and the
        number of records with a prompt in ``language``.

    Example:
        >>> efficacy([{"prompts": {"en": {"teacher_forced": True, "generated": True, "token_accuracy": 1.0}}}])
        {'teacher_forced': 1.0, 'generated': 1.0, 'token_accuracy': 1.0, 'n': 1}
    """
    checks = [e["prompts"][language] for e in evals if language in e.get("prompts", {})]
    n = len(checks)
    if not n:
        return {"teacher_forced": NAN, "generated": NAN, "token_accuracy": NAN, "n": 0}
    return {
        "teacher_forced": sum(bool(c["teacher_forced"]) for c in checks) / n,
        "generated": sum(bool(c["generated"]) for c in checks) / n,
        "token_accuracy": sum(float(c["token_accuracy"]) for c in checks) / n,
        "n": n,
    }


def _languages(evals: Sequence[Mapping[str, Any]], field_name: str) -> list[str]:
    return list(dict.fromkeys(lang for e in evals for lang in e.get(field_name, {})))


def _aligned(before: Sequence[Mapping[str, Any]] | None, after: Sequence[Mapping[str, Any]], what: str) -> None:
    if before is None:
        return
    ids_before, ids_after = [e.get("id") for e in before], [e.get("id") for e in after]
    if ids_before != ids_after:
        raise ValueError(f"{what}: the evaluations before and after must cover the same records in the same order.")


def cross_lingual_generalization(
    before: Sequence[Mapping[str, Any]] | None, after: Sequence[Mapping[str, Any]], check: str = "generated"
) -> dict[str, dict[str, Any]]:
    """Generalisation to the translated prompts, per language, from `CausalLMEditor.evaluate` output.

    Args:
        before: Evaluations of the unedited model (``evaluate(..., base=True)`` or before editing), or ``None`` to
            skip the ``fixed`` figures.
        after: Evaluations after the edits, the same records in the same order.
        check: ``"generated"`` (greedy generation produces the target) or ``"teacher_forced"``.

    Returns:
        Language -> `peft_mpn.metrics.generalization` dict: ``all``, ``fixed`` and their counts.
    """
    _check_key(check)
    _aligned(before, after, "cross_lingual_generalization")
    languages = _languages(after, "prompts")

    def flags(evals: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        return {
            lang: [e["prompts"][lang][check] if lang in e["prompts"] else None for e in evals] for lang in languages
        }

    return generalization(None if before is None else flags(before), flags(after), None)


def rephrase_generalization(
    before: Sequence[Mapping[str, Any]] | None, after: Sequence[Mapping[str, Any]], check: str = "generated"
) -> dict[str, dict[str, Any]]:
    """Generalisation to the rephrased prompts, per language, pooled over each record's rephrases."""
    _check_key(check)
    _aligned(before, after, "rephrase_generalization")
    languages = _languages(after, "rephrases")

    def flags(evals: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        return {
            lang: [[c[check] for c in e["rephrases"][lang]] if lang in e.get("rephrases", {}) else None for e in evals]
            for lang in languages
        }

    return generalization(None if before is None else flags(before), flags(after), None)


def summarize_generation(
    results: Sequence[Any] = (),
    *,
    before: Sequence[Mapping[str, Any]] | None = None,
    after: Sequence[Mapping[str, Any]] | None = None,
    locality: Mapping[str, Any] | None = None,
    train_languages: Sequence[str] = ("en",),
    source_language: str = "en",
) -> dict[str, Any]:
    """One method's generation-edit metrics, with a stable key layout.

    Args:
        results: `GenerationEditResult` objects (or dicts), skipped ones included.
        before: `CausalLMEditor.evaluate` output before the edits (for the ``fixed`` figures).
        after: `CausalLMEditor.evaluate` output after the edits.
        locality: :func:`token_agreement` output on unrelated prompts.
        train_languages: Languages the patches trained on; the GR means are split into these and the others.
        source_language: The edit language, left out of the GR means.

    Returns:
        ``{"n_records", "n_edits", "n_skipped", "SR", "efficacy", "GR", "GR_teacher_forced", "GR_mean_train",
        "GR_mean_heldout", "GR_fixed_mean_train", "GR_fixed_mean_heldout", "rephrase_GR", "locality",
        "seconds_per_edit"}``. ``SR`` is the share of edited records that succeeded right after their edit;
        ``efficacy`` is measured on ``after`` (at the end of the stream); ``GR`` uses greedy generation.
    """
    edited = [r for r in results if not _field(r, "skipped", False)]
    gr = cross_lingual_generalization(before, after) if after is not None else {}
    gr_tf = cross_lingual_generalization(before, after, "teacher_forced") if after is not None else {}

    def mean(languages: Sequence[str], key: str) -> float:
        values = [gr[lang][key] for lang in languages if lang in gr and lang != source_language]
        values = [v for v in values if v is not None and v == v]
        return sum(values) / len(values) if values else NAN

    heldout = [lang for lang in gr if lang not in train_languages]
    return {
        "n_records": len(results),
        "n_edits": len(edited),
        "n_skipped": len(results) - len(edited),
        "SR": sum(bool(_field(r, "success", False)) for r in edited) / len(edited) if edited else NAN,
        "efficacy": efficacy(after, source_language) if after is not None else None,
        "GR": gr,
        "GR_teacher_forced": gr_tf,
        "GR_mean_train": mean(train_languages, "all"),
        "GR_mean_heldout": mean(heldout, "all"),
        "GR_fixed_mean_train": mean(train_languages, "fixed"),
        "GR_fixed_mean_heldout": mean(heldout, "fixed"),
        "rephrase_GR": rephrase_generalization(before, after) if after is not None else {},
        "locality": dict(locality) if locality is not None else None,
        "seconds_per_edit": seconds_per_edit(results),
    }
