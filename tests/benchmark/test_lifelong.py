"""The lifelong curve's data: which countries feed the edits, the memory and locality, per split."""

from __future__ import annotations

import pytest

from peft_mpn.benchmark.lifelong import LifelongConfig, build_data


def _data(split: str, n: int, **kwargs):
    config = LifelongConfig(methods=["mpn"], points=[n], split=split, max_countries=60, memory_size=10_000, **kwargs)
    return build_data(config, lambda texts: [0] * len(texts), lambda _msg: None)


def test_validation_stream_longer_than_the_validation_claims_takes_training_countries_out_of_the_memory():
    short = _data("validation", 10)
    assert {r.meta["split"] for r in short.records} == {"validation"}
    with pytest.raises(ValueError, match="ask for points up to (\\d+)") as info:
        _data("validation", 100_000)
    available = int(info.value.args[0].rsplit(" ", 1)[-1].rstrip("."))
    long = _data("validation", available)
    splits = [r.meta["split"] for r in long.records]
    assert splits[0] == "validation" and "train" in splits  # the validation claims first, then training countries
    assert splits.index("train") == splits.count("validation")
    edited = {r.meta["country"] for r in long.records}
    memory = set(long.memory["multi"])
    edit_texts = {t for r in long.records for t in r.inputs.values()}
    assert not memory & edit_texts  # no edit is in the memory
    assert not memory & set(long.locality) and not edit_texts & set(long.locality)
    assert not edited & {m["country"] for m in long.locality_meta}  # locality countries are never edited
    # a short stream keeps those training countries in its memory
    assert len(short.memory["multi"]) > len(memory)


def test_locality_meta_describes_every_locality_text():
    data = _data("test", 5)
    assert len(data.locality_meta) == len(data.locality) > 0
    assert {m["language"] for m in data.locality_meta} == set(LifelongConfig().languages)
    assert all(m["relation"] in LifelongConfig().relations and m["value_key"] for m in data.locality_meta)


@pytest.mark.parametrize("split", ["test", "validation"])
def test_subject_negatives_swap_the_country_and_are_never_evaluation_texts(split):
    plain, swapped = _data(split, 40), _data(split, 40, subject_negatives=2)
    evaluation = set(swapped.locality) | {t for r in swapped.records for t in r.inputs.values()}
    for before, after in zip(plain.records, swapped.records):
        added = {lang: after.negatives[lang][len(before.negatives.get(lang, [])) :] for lang in after.negatives}
        added = {lang: texts for lang, texts in added.items() if texts}  # rendered in the training languages only
        assert set(added) == {"en", "fr", "de", "es"} and all(len(texts) == 2 for texts in added.values())
        assert not {t for texts in added.values() for t in texts} & evaluation
        value = after.meta["value"]
        assert all(value in text for text in added["en"])  # the same value, about another country
    with pytest.raises(ValueError, match="LifelongConfig.subject_negatives"):
        LifelongConfig(subject_negatives=-1)
    with pytest.raises(ValueError, match="LifelongConfig.subject_true_first"):
        LifelongConfig(subject_negatives=2, subject_true_first=3)


def test_render_claims_renders_the_value_about_other_countries():
    from peft_mpn.data import render_claims

    texts = render_claims("capital", "Paris", ["DE", "JP"], ["en", "fr"])
    assert texts[0]["en"] == "query: The capital of Germany is Paris." and "Japon" in texts[1]["fr"]
    with pytest.raises(ValueError, match="value_key"):
        render_claims("capital", "Atlantis", ["DE"], ["en"])


def test_code_switch_languages_are_never_evaluated_languages():
    from peft_mpn.benchmark.lifelong import _editor

    config = LifelongConfig(methods=["mpn"], code_switch=["auto"])
    assert len(config.code_switch) == 3 and not set(config.code_switch) & set(config.languages)
    assert LifelongConfig(code_switch=["none"]).code_switch == []
    for bad in (["fr"], ["en"], ["ja", "zh"]):
        with pytest.raises(ValueError, match="LifelongConfig.code_switch"):
            LifelongConfig(code_switch=bad)
    # the patch methods train on code-switched copies of the edit; the others never see them
    from peft_mpn.benchmark.lifelong import LifelongData, tiny_model

    tiny = LifelongConfig(methods=["mpn"], code_switch=["ja"], max_countries=8)
    model, tokenizer = tiny_model(["query: The capital of France is Paris."])
    empty = LifelongData([], {"en": [], "multi": []}, [], [], [], 0)
    assert _editor(tiny, "mpn", model, tokenizer, empty).collator.code_switch == ["ja"]
    assert not _editor(tiny, "grace", model, tokenizer, empty).collator.code_switch


def test_locality_meta_knows_which_claims_are_true():
    data = _data("test", 5)
    truth = [m["value_key"] == m["true_key"] for m in data.locality_meta]
    assert any(truth) and not all(truth)  # true and false claims about the locality countries
