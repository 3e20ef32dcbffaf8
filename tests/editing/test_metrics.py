"""Editing metrics: hand-computed small cases, empty inputs, and the offline `evaluate` module."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest

from peft_mpn.editing.metrics import (
    accuracy,
    edit_retention,
    generalization,
    locality,
    monolingual_generalization,
    neighbourhood_locality,
    seconds_per_edit,
    success_rate,
    summarize,
)
from peft_mpn.tasks.classification.editor import EditResult


def nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


# ------------------------------------------------------------------------------------------------------------ SR
def test_success_rate_counts_edited_records_only():
    results = [
        EditResult(id="a", success=True),
        EditResult(id="b", success=False),
        EditResult(id="c", success=True),
        EditResult(id="d", success=True, skipped=True),  # nothing was edited: left out
    ]
    assert success_rate(results) == pytest.approx(2 / 3)
    assert success_rate([r.to_dict() for r in results]) == pytest.approx(2 / 3)  # dicts work too


def test_success_rate_empty_is_nan():
    assert nan(success_rate([]))
    assert nan(success_rate([{"id": "x", "success": True, "skipped": True}]))


# ------------------------------------------------------------------------------------------------------------ GR
def test_generalization_all_and_fixed_by_hand():
    labels = [1, 1, 1, 1, 0]
    before = {"fr": [1, 0, 0, 1, None], "de": [0, 0, 1, 1, 0]}
    after = {"fr": [1, 1, 0, 0, None], "de": [1, 0, 1, 1, 1]}
    gr = generalization(before, after, labels)
    # fr: 4 translations (the 5th is missing). Right before: T F F T; right after: T T F F.
    assert gr["fr"] == {
        "all": 0.5,  # 2 of 4 right after
        "fixed": 0.5,  # of the 2 wrong before (items 1, 2), item 1 is right after
        "n_all": 4,
        "n_fixed": 2,
        "correct_all": 2,
        "correct_fixed": 1,
        "broken": 1,  # item 3: right before, wrong after
    }
    # de: right before F F T T T; right after T F T T F.
    assert gr["de"]["all"] == pytest.approx(3 / 5)
    assert (gr["de"]["fixed"], gr["de"]["n_fixed"], gr["de"]["correct_fixed"]) == (0.5, 2, 1)
    assert gr["de"]["broken"] == 1
    assert list(gr) == ["fr", "de"]


def test_generalization_all_can_hide_that_nothing_transferred():
    # The base model already knew 4 of 5 translations; the one it got wrong stays wrong.
    gr = generalization({"es": [1, 1, 1, 1, 0]}, {"es": [1, 1, 1, 1, 0]}, labels=[1] * 5)["es"]
    assert gr["all"] == pytest.approx(0.8)
    assert gr["fixed"] == 0.0
    assert (gr["n_all"], gr["n_fixed"]) == (5, 1)


def test_generalization_with_correctness_flags_and_without_before():
    results = [EditResult(id="a", success=True, correct={"en": True, "fr": True, "de": False})]
    after = {lang: [r.correct.get(lang) for r in results] for lang in ("fr", "de", "ru")}
    gr = generalization({"fr": [False], "de": [False], "ru": [True]}, after, labels=None)
    assert (gr["fr"]["all"], gr["fr"]["fixed"]) == (1.0, 1.0)
    assert (gr["de"]["all"], gr["de"]["fixed"]) == (0.0, 0.0)
    assert gr["ru"]["n_all"] == 0 and nan(gr["ru"]["all"])  # no ru input: nan, not an error
    only_after = generalization(None, {"fr": [1, 0]}, labels=[1, 1])["fr"]
    assert only_after["all"] == 0.5
    assert only_after["fixed"] is None and only_after["n_fixed"] is None


def test_generalization_empty_and_errors():
    empty = generalization({"fr": []}, {"fr": []}, labels=[])["fr"]
    assert nan(empty["all"]) and nan(empty["fixed"])
    assert (empty["n_all"], empty["n_fixed"]) == (0, 0)
    # Nothing was wrong before: "fixed" is over nothing.
    assert nan(generalization({"fr": [1]}, {"fr": [1]}, labels=[1])["fr"]["fixed"])
    assert generalization({}, {}, labels=[]) == {}
    with pytest.raises(ValueError, match="aligned"):
        generalization(None, {"fr": [1, 0]}, labels=[1])
    with pytest.raises(ValueError, match="before"):
        generalization({"fr": [1]}, {"fr": [1], "de": [1]}, labels=[1])
    with pytest.raises(TypeError, match="labels=None"):
        generalization(None, {"fr": [True]}, labels=[1])


def test_monolingual_generalization_flattens_paraphrases():
    before = {"en": [[0, 0], [1], []]}
    after = {"en": [[1, 0], [1], []]}
    gr = monolingual_generalization(before, after, labels=[1, 1, 0])["en"]
    # Paraphrases: (0 -> 1, label 1): fixed; (0 -> 0): still wrong; (1 -> 1): right both times.
    assert gr["all"] == pytest.approx(2 / 3)
    assert (gr["fixed"], gr["n_all"], gr["n_fixed"]) == (0.5, 3, 2)
    per_paraphrase_labels = monolingual_generalization(None, {"en": [[1, 0]]}, labels=[[1, 0]])["en"]
    assert per_paraphrase_labels["all"] == 1.0
    with pytest.raises(ValueError, match="entries"):
        monolingual_generalization(None, {"en": [[1, 0]]}, labels=[[1]])
    assert nan(monolingual_generalization(None, {"en": [[], None]}, labels=[1, 1])["en"]["all"])


# ------------------------------------------------------------------------------------------------------------ ER
def test_edit_retention_and_accuracy():
    assert edit_retention([1, 0, 1, None], [1, 1, 1, 0]) == pytest.approx(2 / 3)
    assert edit_retention([True, False], None) == 0.5
    assert nan(edit_retention([], []))
    assert accuracy([2, 0, 1], [2, 1, 1]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------------------ locality
def test_locality_raw_and_normalised_differ():
    # 10 unrelated inputs, 3 classes, gold label 1 everywhere.
    labels = [1] * 10
    before = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # 8 right: accuracy 0.8
    after = [1, 1, 1, 1, 1, 1, 0, 0, 2, 0]  # items 6, 7 broken, item 8 moved from one wrong class to another
    loc = locality(before, after, labels)
    assert loc["accuracy_before"] == pytest.approx(0.8)
    assert loc["accuracy_after"] == pytest.approx(0.6)
    assert loc["normalized"] == pytest.approx(0.75)  # TrainR/TestR: 0.6 / 0.8
    assert loc["retain_rate"] == pytest.approx(0.7)  # raw: 3 of 10 predictions changed
    assert (loc["n"], loc["changed"]) == (10, 3)


def test_locality_normalised_hides_flips_that_cancel():
    loc = locality([1, 1, 0, 0], [1, 0, 0, 1], labels=[1, 1, 0, 1])
    assert loc["normalized"] == 1.0  # accuracy 0.75 before and after ...
    assert loc["retain_rate"] == 0.5  # ... but half the predictions moved


def test_locality_without_labels_nested_missing_and_empty():
    loc = locality([[1, 0], [2], None], [[1, 1], [2], 0])
    assert (loc["retain_rate"], loc["n"], loc["changed"]) == (pytest.approx(2 / 3), 3, 1)
    assert loc["accuracy_before"] is None and loc["accuracy_after"] is None and loc["normalized"] is None
    empty = locality([], [], labels=[])
    assert nan(empty["retain_rate"]) and nan(empty["accuracy_before"]) and nan(empty["normalized"])
    assert empty["n"] == 0
    assert nan(locality([1], [1])["retain_rate"]) is False
    assert nan(locality([0, 0], [1, 0], labels=[1, 1])["normalized"])  # accuracy 0 before: no ratio
    with pytest.raises(ValueError):
        locality([1, 0], [1], labels=None)


def test_neighbourhood_locality():
    assert neighbourhood_locality([1, 0, 1], [1, 1, 1]) == locality([1, 0, 1], [1, 1, 1])
    before = {"en": [[1, 0], [1]], "fr": [[1, 1], [None]]}
    after = {"en": [[1, 1], [1]], "fr": [[1, 1], [0]]}
    labels = [[1, 0], [1]]  # the neighbours are parallel: one label list for every language
    out = neighbourhood_locality(before, after, labels)
    # en: 1 of 3 changed; fr: 0 of 2 changed (the missing fr neighbour is left out).
    assert out["retain_rate"] == pytest.approx(4 / 5)
    assert (out["n"], out["changed"]) == (5, 1)
    assert out["per_language"]["en"]["retain_rate"] == pytest.approx(2 / 3)
    assert out["per_language"]["fr"]["retain_rate"] == 1.0
    assert out["per_language"]["fr"]["accuracy_before"] == 0.5  # neighbours (1, label 1), (1, label 0)
    assert out["accuracy_before"] == pytest.approx(4 / 5) and out["accuracy_after"] == pytest.approx(3 / 5)
    by_lang_labels = neighbourhood_locality(before, after, {"en": labels, "fr": labels})
    assert by_lang_labels["normalized"] == pytest.approx(out["normalized"])
    assert nan(neighbourhood_locality({}, {})["retain_rate"])
    with pytest.raises(TypeError):
        neighbourhood_locality([1], {"en": [1]})


# ------------------------------------------------------------------------------------------------------------ time
def test_seconds_per_edit():
    results = [{"seconds": s} for s in (4.0, 1.0, 3.0, 2.0)] + [{"seconds": 100.0, "skipped": True}]
    stats = seconds_per_edit(results)
    assert stats == {"mean": 2.5, "median": 2.5, "p90": pytest.approx(3.7), "total": 10.0, "n": 4}
    one = seconds_per_edit([EditResult(id="a", success=True, seconds=0.5)])
    assert (one["mean"], one["median"], one["p90"]) == (0.5, 0.5, 0.5)
    empty = seconds_per_edit([])
    assert nan(empty["mean"]) and nan(empty["median"]) and nan(empty["p90"])
    assert (empty["total"], empty["n"]) == (0.0, 0)


def test_p90_matches_numpy():
    numpy = pytest.importorskip("numpy")
    times = [0.3, 9.0, 1.2, 4.4, 2.0, 0.1, 7.7]
    assert seconds_per_edit([{"seconds": t} for t in times])["p90"] == pytest.approx(numpy.percentile(times, 90))


# ----------------------------------------------------------------------------------------------------------- summarize
SUMMARY_KEYS = {
    "n_records",
    "n_edits",
    "n_skipped",
    "SR",
    "ER",
    "GR",
    "GR_mean_train",
    "GR_mean_heldout",
    "GR_fixed_mean_train",
    "GR_fixed_mean_heldout",
    "mono_GR",
    "mono_GR_mean",
    "locality",
    "neighbourhood",
    "seconds_per_edit",
}


def test_summarize_assembles_the_pieces():
    results = [
        EditResult(id="a", success=True, seconds=1.0),
        EditResult(id="b", success=False, seconds=3.0),
        EditResult(id="c", success=True, skipped=True),
    ]
    labels = [1, 1]
    before = {"de": [0, 0], "en": [0, 0], "fr": [0, 1], "ru": [0, 0], "xx": [0, 0]}
    after = {"de": [1, 0], "en": [1, 0], "fr": [1, 1], "ru": [0, 0], "xx": [1, 1]}
    gr = generalization(before, after, labels)
    summary = summarize(
        results,
        train_languages=["en", "fr"],
        heldout_languages=["de", "ru"],
        gr=gr,
        mono_gr=monolingual_generalization(None, {"en": [[1, 1], [0]]}, labels),
        er=edit_retention([1, 1], labels),
        locality=locality([1, 0], [1, 1]),
        neighbourhood=neighbourhood_locality([0], [0]),
    )
    assert set(summary) == SUMMARY_KEYS
    assert (summary["n_records"], summary["n_edits"], summary["n_skipped"]) == (3, 2, 1)
    assert summary["SR"] == 0.5 and summary["ER"] == 1.0
    assert list(summary["GR"]) == ["en", "fr", "de", "ru", "xx"]  # train, then held-out, then unlisted
    assert summary["GR"]["fr"] == gr["fr"]
    assert summary["GR_mean_train"] == 1.0  # fr only: English is the edit itself
    assert summary["GR_mean_heldout"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["GR_fixed_mean_train"] == 1.0  # fr: the one translation wrong before is right after
    assert summary["GR_fixed_mean_heldout"] == pytest.approx(0.25)
    assert summary["mono_GR_mean"] == pytest.approx(2 / 3)
    assert summary["locality"]["retain_rate"] == 0.5 and summary["neighbourhood"]["retain_rate"] == 1.0
    assert summary["seconds_per_edit"]["mean"] == 2.0 and summary["seconds_per_edit"]["n"] == 2


def test_summarize_empty_has_the_same_keys():
    summary = summarize([], train_languages=["en", "fr"], heldout_languages=["de"])
    assert set(summary) == SUMMARY_KEYS
    assert nan(summary["SR"]) and summary["ER"] is None
    assert summary["GR"] == {} and summary["mono_GR"] == {}
    assert nan(summary["GR_mean_train"]) and nan(summary["GR_mean_heldout"]) and nan(summary["mono_GR_mean"])
    assert summary["locality"] is None and summary["neighbourhood"] is None
    assert summary["seconds_per_edit"]["n"] == 0
    # A held-out language without any translation does not drag the mean to nan.
    gr = generalization(None, {"de": [1], "ru": [None]}, labels=[1])
    assert summarize([], heldout_languages=["de", "ru"], gr=gr)["GR_mean_heldout"] == 1.0


# ------------------------------------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def edit_metric(tmp_path_factory):
    """The metric loaded with `evaluate.load` from its local path, offline, with sockets disabled."""
    evaluate = pytest.importorskip("evaluate")
    from peft_mpn.benchmark.evaluate_module import METRIC_PATH

    def no_network(*args, **kwargs):
        raise OSError("network access during evaluate.load")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_EVALUATE_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", no_network)
        yield evaluate.load(METRIC_PATH, keep_in_memory=True, cache_dir=str(tmp_path_factory.mktemp("metric")))


def test_evaluate_module_is_a_package_file():
    from setuptools import find_packages

    import peft_mpn.benchmark.evaluate_module as module

    src = Path(module.__file__).parents[3]
    # shipped as a module, no package_data needed
    assert "peft_mpn.benchmark.evaluate_module" in find_packages(str(src))
    assert Path(module.METRIC_PATH).is_file()


def test_evaluate_module_matches_metrics(edit_metric):
    predictions = [1, 1, 1, 1, 1, 1, 0, 0, 2, 0, 1, 0]
    before = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    references = [1] * 12
    languages = ["en"] * 10 + ["fr", "fr"]
    out = edit_metric.compute(
        predictions=predictions, references=references, predictions_before=before, languages=languages
    )
    expected = locality(before, predictions, references)
    for key in ("retain_rate", "accuracy_before", "accuracy_after", "normalized", "changed"):
        assert out[key] == pytest.approx(expected[key])
    assert out["accuracy"] == pytest.approx(accuracy(predictions, references)) and out["n"] == 12
    en = out["per_language"]["en"]
    assert (en["retain_rate"], en["accuracy_before"], en["normalized"]) == (
        pytest.approx(0.7),
        pytest.approx(0.8),
        pytest.approx(0.75),
    )
    fr = out["per_language"]["fr"]
    gr_fr = generalization({"fr": before[10:]}, {"fr": predictions[10:]}, references[10:])["fr"]
    assert (fr["accuracy"], fr["fixed"], fr["n_fixed"]) == (gr_fr["all"], gr_fr["fixed"], gr_fr["n_fixed"])
    assert (fr["accuracy"], fr["fixed"]) == (0.5, 0.5)
    plain = edit_metric.compute(predictions=[1, 0], references=[1, 1])
    assert plain == {"accuracy": 0.5, "n": 2}
