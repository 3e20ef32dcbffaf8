"""Editing metrics, as pure functions over predictions: the caller runs the model, these only count.

Every function takes predictions (class ids) or correctness flags that the experiment runner already computed, so
the metrics can be tested by hand and reused with any model. The figures follow Transformer-Patcher (SR, ER,
TrainR/TestR) and the multilingual editing literature (cross-lingual GR), with two additions that keep the
reporting honest:

* GR comes in two flavours. ``all`` is the share of translations predicted right after the edit. ``fixed`` is the
  same share among the translations that were *wrong before* the edit: a translation the unedited model already got
  right says nothing about transfer, yet it counts in ``all``.
* Locality comes raw and normalised. The raw ``retain_rate`` is the share of unrelated inputs whose prediction did
  not change at all; ``normalized`` is Transformer-Patcher's TrainR/TestR, accuracy after over accuracy before,
  which can hide changes that cancel out (a flip to right and a flip to wrong leave accuracy as it was).

Conventions:

* Predictions are aligned lists: item ``i`` of every list is about the same input. ``None`` marks an item that
  does not exist (a record without a translation in that language) and is left out of every count.
* Where a list holds lists (several paraphrases, locality texts or neighbours per record), it is flattened, and
  ``labels`` must have the same shape (or one label per record, which is repeated).
* ``labels=None`` means the values already are correctness flags (``True`` = right), as in ``EditResult.correct``.
* A rate over nothing is ``nan`` (there was nothing to measure); a figure that was not measured at all is
  ``None`` (for instance accuracies of locality inputs without labels). Neither raises ``ZeroDivisionError``.

Example:
    >>> generalization({"fr": [1, 0, 0]}, {"fr": [1, 1, 0]}, labels=[1, 1, 1])["fr"]["fixed"]
    0.5
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


__all__ = [
    "accuracy",
    "edit_retention",
    "generalization",
    "locality",
    "monolingual_generalization",
    "neighbourhood_locality",
    "seconds_per_edit",
    "success_rate",
    "summarize",
]

NAN = float("nan")

#: One item: a prediction (class id), a correctness flag, ``None`` (missing), or a list of those (flattened).
Item = Any
PerLanguage = Mapping[str, Sequence[Item]]


# ---------------------------------------------------------------------------------------------------- helpers
def _field(result: Any, name: str, default: Any = None) -> Any:
    """``result[name]`` for a dict (``EditResult.to_dict()``, a checkpoint line), ``result.name`` otherwise."""
    if isinstance(result, Mapping):
        return result.get(name, default)
    return getattr(result, name, default)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else NAN


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _mean(values: Sequence[float | None]) -> float:
    """Mean of the values that are neither ``None`` nor ``nan``; ``nan`` if there are none."""
    kept = [v for v in values if v is not None and not _is_nan(v)]
    return sum(kept) / len(kept) if kept else NAN


def _flatten(items: Sequence[Item], labels: Sequence[Any] | None, what: str) -> tuple[list[Any], list[Any] | None]:
    """Flatten one level of nesting in ``items``; repeat a per-record label over its nested items."""
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"{what}: {len(items)} items but {len(labels)} labels; the lists must be aligned.")
    flat: list[Any] = []
    flat_labels: list[Any] | None = None if labels is None else []
    for i, item in enumerate(items):
        label = None if labels is None else labels[i]
        if isinstance(item, (list, tuple)):
            if isinstance(label, (list, tuple)) and len(label) != len(item):
                raise ValueError(f"{what}: item {i} has {len(item)} entries but {len(label)} labels.")
            flat.extend(item)
            if flat_labels is not None:
                flat_labels.extend(label if isinstance(label, (list, tuple)) else [label] * len(item))
        else:
            if isinstance(label, (list, tuple)):
                raise ValueError(f"{what}: item {i} is a single prediction but has a list of labels.")
            flat.append(item)
            if flat_labels is not None:
                flat_labels.append(label)
    return flat, flat_labels


def _is_right(value: Any, label: Any, what: str) -> bool:
    if label is None:
        return bool(value)
    if isinstance(value, bool):
        raise TypeError(
            f"{what}: got the correctness flag {value!r} together with labels; pass class ids with labels, "
            "or labels=None for flags (as in EditResult.correct)."
        )
    return value == label


def _right_before_after(
    before: Sequence[Item] | None, after: Sequence[Item], labels: Sequence[Any] | None, what: str
) -> list[tuple[bool | None, bool]]:
    """``(right before, right after)`` per existing item; ``right before`` is ``None`` without ``before``."""
    after_flat, flat_labels = _flatten(after, labels, what)
    if before is None:
        before_flat: list[Any] = [None] * len(after_flat)
    else:
        if len(before) != len(after):
            raise ValueError(f"{what}: {len(before)} predictions before but {len(after)} after.")
        before_flat, _ = _flatten(before, labels, what)
        if len(before_flat) != len(after_flat):
            raise ValueError(f"{what}: before and after hold different numbers of nested predictions.")
    pairs: list[tuple[bool | None, bool]] = []
    for i, (b, a) in enumerate(zip(before_flat, after_flat)):
        if a is None or (before is not None and b is None):
            continue
        label = None if flat_labels is None else flat_labels[i]
        if flat_labels is not None and label is None:
            continue
        right_before = None if before is None else _is_right(b, label, what)
        pairs.append((right_before, _is_right(a, label, what)))
    return pairs


def _rates(pairs: list[tuple[bool | None, bool]], has_before: bool) -> dict[str, Any]:
    n_all = len(pairs)
    correct_all = sum(after for _, after in pairs)
    if not has_before:
        return {
            "all": _ratio(correct_all, n_all),
            "fixed": None,
            "n_all": n_all,
            "n_fixed": None,
            "correct_all": correct_all,
            "correct_fixed": None,
            "broken": None,
        }
    wrong_before = [after for before, after in pairs if not before]
    correct_fixed = sum(wrong_before)
    return {
        "all": _ratio(correct_all, n_all),
        "fixed": _ratio(correct_fixed, len(wrong_before)),
        "n_all": n_all,
        "n_fixed": len(wrong_before),
        "correct_all": correct_all,
        "correct_fixed": correct_fixed,
        "broken": sum(1 for before, after in pairs if before and not after),
    }


def _per_language(
    before: PerLanguage | None, after: PerLanguage, labels: Sequence[Any] | None, what: str
) -> dict[str, dict[str, Any]]:
    if before is not None:
        missing = [lang for lang in after if lang not in before]
        if missing:
            raise ValueError(f"{what}: no predictions before the edits for {missing}.")
    return {
        lang: _rates(
            _right_before_after(None if before is None else before[lang], after[lang], labels, f"{what}[{lang}]"),
            has_before=before is not None,
        )
        for lang in after
    }


# ---------------------------------------------------------------------------------------------------- metrics
def success_rate(results: Sequence[Any]) -> float:
    """Edit success rate (SR): the share of edits predicted right right after they were made.

    Skipped records (the model already got them right, so nothing was edited) are left out.

    Args:
        results: ``EditResult`` objects or their ``to_dict()`` dicts (``success``, ``skipped``).

    Returns:
        The share in [0, 1]; ``nan`` when no record was edited.

    Example:
        >>> success_rate([{"success": True}, {"success": False}, {"success": True, "skipped": True}])
        0.5
    """
    edited = [r for r in results if not _field(r, "skipped", False)]
    return _ratio(sum(bool(_field(r, "success", False)) for r in edited), len(edited))


def generalization(
    before: PerLanguage | None, after: PerLanguage, labels: Sequence[Any] | None
) -> dict[str, dict[str, Any]]:
    """Cross-lingual generalisation (GR) per language, both ways.

    For each language, item ``i`` is the translation of edit ``i`` (``None`` where that edit has none):

    * ``all``: the share of translations predicted right after the edits. It counts translations the unedited
      model already got right, so a strong base model inflates it.
    * ``fixed``: the same share among the translations that were wrong before the edits: how often the edit
      actually carried over to that language. Report it next to ``all``.

    "After" is whatever the caller measured: right after each edit (``EditResult.correct``) or at the end of the
    stream; say which in the report.

    Args:
        before: Language -> predictions of the unedited model on the translations; ``None`` to skip ``fixed``.
        after: Language -> predictions after the edits.
        labels: The edit labels, one per edit (the target is the same in every language), or ``None`` when
            ``before``/``after`` hold correctness flags.

    Returns:
        Language -> ``{"all", "fixed", "n_all", "n_fixed", "correct_all", "correct_fixed", "broken"}``: the two
        rates, their denominators (translations measured; translations wrong before), their numerators, and
        ``broken``, the translations right before and wrong after. Rates over nothing are ``nan``; the
        ``fixed`` figures are ``None`` without ``before``.

    Raises:
        ValueError: If the lists are not aligned.

    Example:
        >>> gr = generalization({"fr": [1, 0, 0, 1]}, {"fr": [1, 1, 0, 0]}, labels=[1, 1, 1, 1])
        >>> gr["fr"]["all"], gr["fr"]["fixed"], gr["fr"]["n_fixed"], gr["fr"]["broken"]
        (0.5, 0.5, 2, 1)
    """
    return _per_language(before, after, labels, "generalization")


def monolingual_generalization(
    before: PerLanguage | None, after: PerLanguage, labels: Sequence[Any] | None
) -> dict[str, dict[str, Any]]:
    """Monolingual generalisation: :func:`generalization` on paraphrases (``EditRecord.rephrases``).

    Args:
        before: Language -> one entry per edit: the list of predictions on its paraphrases (or one prediction,
            or ``None`` / ``[]`` for none) before the edits; ``None`` to skip ``fixed``.
        after: The same after the edits.
        labels: One label per edit (repeated over its paraphrases), a list per edit, or ``None`` for flags.

    Returns:
        The same layout as :func:`generalization`; counts are over paraphrases.

    Example:
        >>> monolingual_generalization(None, {"en": [[1, 0], [1]]}, labels=[1, 1])["en"]["all"]
        0.6666666666666666
    """
    return _per_language(before, after, labels, "monolingual_generalization")


def accuracy(predictions: Sequence[Item], labels: Sequence[Any] | None) -> float:
    """The share of predictions equal to their labels (``None`` items left out, nested lists flattened).

    Args:
        predictions: Predicted class ids.
        labels: Gold labels, aligned, or ``None`` when ``predictions`` are correctness flags.

    Returns:
        The share in [0, 1]; ``nan`` for no items.

    Example:
        >>> accuracy([1, 0, None, [1, 1]], [1, 1, 0, 1])
        0.75
    """
    pairs = _right_before_after(None, predictions, labels, "accuracy")
    return _ratio(sum(after for _, after in pairs), len(pairs))


def edit_retention(final_predictions: Sequence[Item], labels: Sequence[Any] | None) -> float:
    """Edit retention (ER): the share of past edits still predicted right at the end of the stream.

    Args:
        final_predictions: Predictions of the final model on the edit examples (normally the English inputs of
            the edited, non-skipped records), ``None`` for items to leave out.
        labels: The edit labels, aligned, or ``None`` for flags.

    Returns:
        The share in [0, 1]; ``nan`` for no edits.

    Example:
        >>> edit_retention([1, 0, 1, None], [1, 1, 1, 0])
        0.6666666666666666
    """
    return accuracy(final_predictions, labels)


def locality(
    before_preds: Sequence[Item], after_preds: Sequence[Item], labels: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Locality on unrelated inputs, raw and normalised.

    * ``retain_rate`` (raw): the share of unrelated inputs whose prediction is unchanged by the edits. Any flip
      counts against it, whether the old prediction was right or wrong. It needs no labels.
    * ``normalized``: Transformer-Patcher's TrainR/TestR, ``accuracy_after / accuracy_before`` on the same inputs.
      It needs labels, can exceed 1 (an edit that happens to fix unrelated inputs) and hides flips that cancel
      out: with accuracy 0.8 before and 0.6 after it is 0.75, yet the raw retain rate may be 0.7 (more
      predictions moved than the accuracy drop shows).

    Args:
        before_preds: Predictions of the unedited model.
        after_preds: Predictions after the edits, aligned (nested lists are flattened).
        labels: Gold labels, aligned, for the accuracies; ``None`` when there are none (``EditRecord.locality``
            texts carry no labels).

    Returns:
        ``{"retain_rate", "accuracy_before", "accuracy_after", "normalized", "n", "changed"}``; ``n`` counts the
        inputs, ``changed`` those whose prediction moved. Rates over nothing and ``normalized`` with an accuracy
        of 0 before are ``nan``; the accuracies and ``normalized`` are ``None`` without labels.

    Example:
        >>> loc = locality([1, 1, 0, 0], [1, 0, 0, 1], labels=[1, 1, 0, 1])
        >>> loc["retain_rate"], loc["accuracy_before"], loc["accuracy_after"], loc["normalized"]
        (0.5, 0.75, 0.75, 1.0)
    """
    if len(before_preds) != len(after_preds):
        raise ValueError(f"locality: {len(before_preds)} predictions before but {len(after_preds)} after.")
    before_flat, flat_labels = _flatten(before_preds, labels, "locality")
    after_flat, _ = _flatten(after_preds, labels, "locality")
    if len(before_flat) != len(after_flat):
        raise ValueError("locality: before and after hold different numbers of nested predictions.")
    kept = [i for i, (b, a) in enumerate(zip(before_flat, after_flat)) if b is not None and a is not None]
    changed = sum(before_flat[i] != after_flat[i] for i in kept)
    out: dict[str, Any] = {
        "retain_rate": _ratio(len(kept) - changed, len(kept)),
        "accuracy_before": None,
        "accuracy_after": None,
        "normalized": None,
        "n": len(kept),
        "changed": changed,
    }
    if flat_labels is not None:
        scored = [i for i in kept if flat_labels[i] is not None]
        acc_before = _ratio(sum(before_flat[i] == flat_labels[i] for i in scored), len(scored))
        acc_after = _ratio(sum(after_flat[i] == flat_labels[i] for i in scored), len(scored))
        out["accuracy_before"] = acc_before
        out["accuracy_after"] = acc_after
        out["normalized"] = NAN if _is_nan(acc_before) or acc_before == 0 else acc_after / acc_before
    return out


def neighbourhood_locality(
    before: Sequence[Item] | PerLanguage,
    after: Sequence[Item] | PerLanguage,
    labels: Sequence[Any] | PerLanguage | None = None,
) -> dict[str, Any]:
    """Locality on neighbours: other claims about the same subject as the edit (``EditRecord.neighbours``).

    A patch that fires on everything about France is not an edit of one fact about France: its neighbours should
    keep their predictions. This is :func:`locality` on those claims, so ``retain_rate`` is the raw figure.

    Args:
        before: Predictions of the unedited model on the neighbours: a list (nested per record is fine), or
            language -> such a list.
        after: The same after the edits.
        labels: The neighbours' labels, in the same shape (or one list shared by every language), or ``None``.

    Returns:
        The :func:`locality` dict over all neighbours pooled; with per-language input, also ``"per_language"``:
        language -> :func:`locality` dict.

    Example:
        >>> neighbourhood_locality({"en": [1, 0], "fr": [1, 1]}, {"en": [1, 1], "fr": [1, 1]})["retain_rate"]
        0.75
    """
    if not isinstance(before, Mapping) and not isinstance(after, Mapping):
        return locality(before, after, labels)  # type: ignore[arg-type]
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        raise TypeError("neighbourhood_locality: before and after must both be lists or both be per-language dicts.")
    missing = [lang for lang in after if lang not in before]
    if missing:
        raise ValueError(f"neighbourhood_locality: no predictions before the edits for {missing}.")
    pooled_before: list[Any] = []
    pooled_after: list[Any] = []
    pooled_labels: list[Any] | None = None if labels is None else []
    per_language: dict[str, dict[str, Any]] = {}
    for lang in after:
        lang_labels = labels.get(lang) if isinstance(labels, Mapping) else labels
        if labels is not None and lang_labels is None:
            raise ValueError(f"neighbourhood_locality: no labels for {lang!r}.")
        per_language[lang] = locality(before[lang], after[lang], lang_labels)
        if len(before[lang]) != len(after[lang]):
            raise ValueError(f"neighbourhood_locality[{lang}]: before and after differ in length.")
        flat_before, flat_labels = _flatten(before[lang], lang_labels, f"neighbourhood_locality[{lang}]")
        flat_after, _ = _flatten(after[lang], lang_labels, f"neighbourhood_locality[{lang}]")
        pooled_before += flat_before
        pooled_after += flat_after
        if pooled_labels is not None and flat_labels is not None:
            pooled_labels += flat_labels
    out = locality(pooled_before, pooled_after, pooled_labels)
    out["per_language"] = per_language
    return out


def seconds_per_edit(results: Sequence[Any]) -> dict[str, Any]:
    """Wall time per edit: mean, median and 90th percentile over the edited (non-skipped) records.

    Skipped records cost only one prediction and would drag the figures towards 0, so they are left out.

    Args:
        results: ``EditResult`` objects or dicts (``seconds``, ``skipped``).

    Returns:
        ``{"mean", "median", "p90", "total", "n"}``; the statistics are ``nan`` for no edits. ``p90`` interpolates
        linearly between order statistics (NumPy's default).

    Example:
        >>> seconds_per_edit([{"seconds": s} for s in (1.0, 2.0, 3.0, 4.0)])["p90"]
        3.7
    """
    times = sorted(float(_field(r, "seconds", 0.0)) for r in results if not _field(r, "skipped", False))
    if not times:
        return {"mean": NAN, "median": NAN, "p90": NAN, "total": 0.0, "n": 0}
    position = 0.9 * (len(times) - 1)
    low = math.floor(position)
    high = min(low + 1, len(times) - 1)
    p90 = times[low] + (times[high] - times[low]) * (position - low)
    return {
        "mean": statistics.fmean(times),
        "median": statistics.median(times),
        "p90": p90,
        "total": math.fsum(times),
        "n": len(times),
    }


def _ordered(gr: Mapping[str, Any], train: Sequence[str], heldout: Sequence[str]) -> dict[str, Any]:
    listed = [lang for lang in [*train, *heldout] if lang in gr]
    others = [lang for lang in gr if lang not in listed]
    return {lang: gr[lang] for lang in dict.fromkeys(listed + others)}


def _language_mean(gr: Mapping[str, Mapping[str, Any]], languages: Sequence[str], key: str, source: str) -> float:
    return _mean([gr[lang].get(key) for lang in languages if lang in gr and lang != source])


def summarize(
    results: Sequence[Any] = (),
    *,
    train_languages: Sequence[str] = ("en",),
    heldout_languages: Sequence[str] = (),
    gr: Mapping[str, Mapping[str, Any]] | None = None,
    mono_gr: Mapping[str, Mapping[str, Any]] | None = None,
    er: float | None = None,
    locality: Mapping[str, Any] | None = None,
    neighbourhood: Mapping[str, Any] | None = None,
    source_language: str = "en",
) -> dict[str, Any]:
    """Assemble one method's metrics from the pieces, with a stable key layout.

    SR and seconds per edit come from ``results``; the rest is passed in as computed by the functions above.

    Args:
        results: The method's ``EditResult`` objects (or dicts), skipped ones included.
        train_languages: Languages MPN trained on (English included); shared by every method of an experiment so
            that their columns line up, even for T-Patcher, which trains on English only.
        heldout_languages: Languages no method trained on.
        gr: :func:`generalization` output.
        mono_gr: :func:`monolingual_generalization` output.
        er: :func:`edit_retention` output.
        locality: :func:`locality` output on unrelated inputs.
        neighbourhood: :func:`neighbourhood_locality` output.
        source_language: The edit language, left out of the GR means (its "translation" is the edit itself).

    Returns:
        A dict with always the same keys::

            {"n_records", "n_edits", "n_skipped", "SR", "ER",
             "GR": {lang: {"all", "fixed", "n_all", "n_fixed", ...}},  # train languages first, then held-out
             "GR_mean_train", "GR_mean_heldout", "GR_fixed_mean_train", "GR_fixed_mean_heldout",
             "mono_GR": {lang: {...}}, "mono_GR_mean",
             "locality": {...} | None, "neighbourhood": {...} | None,
             "seconds_per_edit": {"mean", "median", "p90", "total", "n"}}

        The means are macro-averages over languages (source language excluded), ignoring languages without
        data; ``nan`` when there is none. Pieces not passed are ``None`` (``{}`` for the per-language dicts).

    Example:
        >>> m = summarize([{"success": True}], train_languages=["en", "fr"], heldout_languages=["de"],
        ...               gr=generalization(None, {"fr": [1], "de": [0]}, labels=[1]))
        >>> m["SR"], m["GR_mean_train"], m["GR_mean_heldout"]
        (1.0, 1.0, 0.0)
    """
    gr = _ordered(gr or {}, train_languages, heldout_languages)
    mono_gr = _ordered(mono_gr or {}, train_languages, heldout_languages)
    n_skipped = sum(bool(_field(r, "skipped", False)) for r in results)
    return {
        "n_records": len(results),
        "n_edits": len(results) - n_skipped,
        "n_skipped": n_skipped,
        "SR": success_rate(results),
        "ER": er,
        "GR": gr,
        "GR_mean_train": _language_mean(gr, train_languages, "all", source_language),
        "GR_mean_heldout": _language_mean(gr, heldout_languages, "all", source_language),
        "GR_fixed_mean_train": _language_mean(gr, train_languages, "fixed", source_language),
        "GR_fixed_mean_heldout": _language_mean(gr, heldout_languages, "fixed", source_language),
        "mono_GR": mono_gr,
        "mono_GR_mean": _mean([entry.get("all") for entry in mono_gr.values()]),
        "locality": None if locality is None else dict(locality),
        "neighbourhood": None if neighbourhood is None else dict(neighbourhood),
        "seconds_per_edit": seconds_per_edit(results),
    }
