"""Subject-swapped hard negatives (`peft_mpn.data.add_subject_negatives`)."""

from __future__ import annotations

import pytest

from peft_mpn.data import EditRecord, add_subject_negatives, render_claims, to_edit_records


def _record(**meta) -> EditRecord:
    return EditRecord(
        "JO-currency",
        {"en": "The currency of Jordan is the euro.", "fr": "La monnaie de la Jordanie est l'euro."},
        label=1,
        negatives={"en": ["The currency of Jordan is the dollar."]},
        meta=meta or {"subject": {"en": "Jordan", "fr": "la Jordanie"}},
    )


def test_text_records_swap_the_subject_in_every_language_and_keep_their_negatives():
    pool = [{"en": "Peru", "fr": "le Pérou"}, {"en": "Chile"}, {"en": "Jordan", "fr": "la Jordanie"}]
    (out,) = add_subject_negatives([_record()], pool, k=3)
    assert out.negatives["en"][0] == "The currency of Jordan is the dollar."  # kept, first
    assert sorted(out.negatives["en"][1:]) == [
        "The currency of Chile is the euro.",
        "The currency of Peru is the euro.",
    ]
    assert out.negatives["fr"] == ["La monnaie de le Pérou est l'euro."]  # only subjects named in that language
    assert out.inputs == _record().inputs and out.label == 1  # nothing else changes
    assert _record().negatives == {"en": ["The currency of Jordan is the dollar."]}  # the input is not modified


def test_the_draw_is_seeded_per_record_and_k_zero_changes_nothing():
    pool = [{"en": name} for name in ("Peru", "Chile", "Spain", "Japan", "Mali", "Fiji")]
    first = add_subject_negatives([_record()], pool, k=2, seed=1)[0].negatives["en"]
    assert add_subject_negatives([_record()], pool, k=2, seed=1)[0].negatives["en"] == first
    assert len(first) == 3
    draws = {tuple(add_subject_negatives([_record()], pool, k=2, seed=s)[0].negatives["en"]) for s in range(6)}
    assert len(draws) > 1
    assert add_subject_negatives([_record()], pool, k=0)[0].negatives == _record().negatives
    (en_only,) = add_subject_negatives([_record()], pool, k=1, languages=["en"])
    assert "fr" not in en_only.negatives


def test_benchmark_claims_are_rendered_about_other_countries():
    rows = to_edit_records(languages=["en", "fr"], relations=["capital"], max_countries=20, n_negatives=1)
    row = next(r for r in rows if r["meta"]["country"] != "DE")
    (out,) = add_subject_negatives([row], ["DE", row["meta"]["country"]], k=5)
    expected = render_claims(row["meta"]["relation"], row["meta"]["value_key"], ["DE"], ["en", "fr"])[0]
    for lang in ("en", "fr"):  # one negative added: its own country is never drawn
        assert out.negatives[lang] == [*row["negatives"][lang], expected[lang]]


def test_clear_errors():
    with pytest.raises(ValueError, match="k must be an int >= 0"):
        add_subject_negatives([_record()], [{"en": "Peru"}], k=-1)
    with pytest.raises(ValueError, match="field 'meta' needs 'subject'"):
        add_subject_negatives([_record(relation="capital")], ["DE"], k=1)
    with pytest.raises(ValueError, match="dicts \\(language -> name\\)"):
        add_subject_negatives([_record()], ["PE"], k=1)
    with pytest.raises(ValueError, match="ISO 3166-1"):
        add_subject_negatives([_record(relation="capital", value_key="Paris", country="FR")], [{"en": "x"}], k=1)
    with pytest.raises(ValueError, match="is not in its 'en' input"):
        add_subject_negatives([_record(subject={"en": "Syria"})], [{"en": "Peru"}], k=1)


def test_true_first_draws_subjects_that_really_have_the_value():
    rows = to_edit_records(languages=["en"], relations=["continent"], seed=0)
    row = next(r for r in rows if r["meta"]["country"] == "DE" and r["meta"]["value_key"] == r["meta"]["true_key"])
    europe, elsewhere = ["FR", "ES", "IT"], ["JP", "BR", "CN", "AU", "EG", "PE", "MX"]
    names = {iso: render_claims("continent", row["meta"]["value_key"], [iso], ["en"])[0]["en"] for iso in europe}
    for seed in range(5):
        (out,) = add_subject_negatives([row], elsewhere + europe, k=3, true_first=2, seed=seed)
        added = out.negatives["en"][len(row["negatives"]["en"]) :]
        assert len(added) == 3 and sum(text in names.values() for text in added) >= 2
    (plain,) = add_subject_negatives([row], elsewhere + europe, k=3, seed=0)
    assert len(plain.negatives["en"]) == len(row["negatives"]["en"]) + 3
    with pytest.raises(ValueError, match="true_first must be an int in \\[0, k=1\\]"):
        add_subject_negatives([row], europe, k=1, true_first=2)
