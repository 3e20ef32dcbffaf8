"""Generation-edit metrics: token agreement, efficacy, cross-lingual and rephrase generalisation, summary."""

from __future__ import annotations

import math

import pytest

from peft_mpn.tasks.generation.metrics import (
    cross_lingual_generalization,
    efficacy,
    rephrase_generalization,
    summarize_generation,
    token_accuracy,
    token_agreement,
)


def check(tf: bool, gen: bool, acc: float | None = None) -> dict:
    return {"teacher_forced": tf, "generated": gen, "token_accuracy": float(tf) if acc is None else acc, "output": ""}


BEFORE = [
    {
        "id": "a",
        "prompts": {"en": check(False, False, 0.5), "fr": check(False, False), "de": check(True, True)},
        "rephrases": {"en": [check(False, False), check(True, True)]},
    },
    {"id": "b", "prompts": {"en": check(False, False, 0.0), "fr": check(False, False)}, "rephrases": {}},
]
AFTER = [
    {
        "id": "a",
        "prompts": {"en": check(True, True), "fr": check(True, True), "de": check(False, False)},
        "rephrases": {"en": [check(True, True), check(True, True)]},
    },
    {"id": "b", "prompts": {"en": check(True, False, 1.0), "fr": check(False, False)}, "rephrases": {}},
]


def test_token_agreement_pools_tokens_and_counts_exact_prompts():
    out = token_agreement([[1, 2, 3, 4], [5, 6], [7]], [[1, 2, 0, 4], [5, 6], [8]])
    assert out["agreement"] == pytest.approx(5 / 7)
    assert out["exact"] == pytest.approx(1 / 3)
    assert (out["n_tokens"], out["n_prompts"], out["changed_tokens"]) == (7, 3, 2)
    assert math.isnan(token_agreement([], [])["agreement"])
    with pytest.raises(ValueError, match="sequence 0"):
        token_agreement([[1, 2]], [[1]])
    with pytest.raises(ValueError, match="1 reference sequences but 2"):
        token_agreement([[1]], [[1], [2]])


def test_token_accuracy():
    assert token_accuracy([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)
    assert math.isnan(token_accuracy([], []))
    with pytest.raises(ValueError, match="target of 2"):
        token_accuracy([1], [1, 2])


def test_efficacy_counts_teacher_forcing_and_generation_separately():
    out = efficacy(AFTER)
    assert out == {"teacher_forced": 1.0, "generated": 0.5, "token_accuracy": 1.0, "n": 2}
    assert efficacy(AFTER, "zh")["n"] == 0


def test_cross_lingual_generalization_all_and_fixed():
    gr = cross_lingual_generalization(BEFORE, AFTER)
    assert gr["fr"]["all"] == 0.5 and gr["fr"]["fixed"] == 0.5 and gr["fr"]["n_fixed"] == 2
    assert gr["de"]["all"] == 0.0 and gr["de"]["broken"] == 1 and gr["de"]["n_all"] == 1  # record b has no de
    tf = cross_lingual_generalization(BEFORE, AFTER, check="teacher_forced")
    assert tf["en"]["all"] == 1.0
    assert cross_lingual_generalization(None, AFTER)["fr"]["fixed"] is None
    with pytest.raises(ValueError, match="check must be one of"):
        cross_lingual_generalization(BEFORE, AFTER, check="logits")
    with pytest.raises(ValueError, match="same records"):
        cross_lingual_generalization(BEFORE[:1], AFTER)


def test_rephrase_generalization_pools_rephrases():
    gr = rephrase_generalization(BEFORE, AFTER)
    assert gr["en"]["all"] == 1.0 and gr["en"]["n_all"] == 2 and gr["en"]["fixed"] == 1.0 and gr["en"]["n_fixed"] == 1


def test_summarize_generation_layout():
    results = [{"success": True, "seconds": 2.0}, {"success": False, "seconds": 4.0}, {"skipped": True}]
    locality = token_agreement([[1, 2]], [[1, 2]])
    out = summarize_generation(results, before=BEFORE, after=AFTER, locality=locality, train_languages=["en", "fr"])
    assert (out["n_records"], out["n_edits"], out["n_skipped"], out["SR"]) == (3, 2, 1, 0.5)
    assert out["GR_mean_train"] == 0.5 and out["GR_mean_heldout"] == 0.0
    assert out["GR_fixed_mean_train"] == 0.5 and math.isnan(out["GR_fixed_mean_heldout"])  # de was right before
    assert out["efficacy"]["generated"] == 0.5 and out["locality"]["agreement"] == 1.0
    assert out["seconds_per_edit"]["mean"] == 3.0
    empty = summarize_generation([])
    assert math.isnan(empty["SR"]) and empty["GR"] == {} and empty["efficacy"] is None
