"""The counterfactual multilingual generation benchmark (``peft_mpn.data.counterfactual``): real data, no network."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from peft_mpn.data import gemma3
from peft_mpn.data.counterfactual import (
    DEFAULT_LANGUAGES,
    CounterfactualEditRecord,
    answer_text,
    build_counterfactual_records,
    counterfactual_countries,
    fact_texts,
    keep_known,
    language_counts,
    load_generation_templates,
    one_per_country,
    prompt_languages,
    read_counterfactual_records,
    unrelated_prompts,
)
from peft_mpn.data.countries import cldr_capital, continent_name
from peft_mpn.data.generation import GenerationEditRecord, write_generation_records


SMALL = 30


@pytest.fixture(scope="module")
def records():
    return build_counterfactual_records(max_countries=SMALL)


@pytest.fixture(scope="module")
def full():
    return build_counterfactual_records()


def test_every_record_has_every_language_and_scripts_beyond_latin(records):
    assert len(DEFAULT_LANGUAGES) >= 7 and {"ar", "zh", "ru", "ja", "hi"} <= set(DEFAULT_LANGUAGES)
    assert records
    for rec in records:
        assert isinstance(rec, GenerationEditRecord)
        assert list(rec.prompt) == list(DEFAULT_LANGUAGES) == list(rec.target) == list(rec.original)
        assert rec.id == f"{rec.country}-{rec.relation}"
        for lang in rec.prompt:
            assert rec.prompt[lang].startswith(rec.prompt[lang].split("\n")[0]) and "\n" in rec.prompt[lang]
            assert rec.meta["subject"][lang] in rec.prompt[lang]
            assert rec.target[lang] != rec.original[lang]  # a counterfactual, in every language
            spaced = lang not in ("zh", "ja")
            assert rec.target[lang].startswith(" ") == spaced and rec.original[lang].startswith(" ") == spaced
    assert {rec.relation for rec in records} == {"capital", "continent", "currency", "language"}


def test_real_facts_in_each_languages_spelling(full):
    by_id = {rec.id: rec for rec in full}
    fr = by_id["FR-capital"].original
    assert fr["en"] == " Paris" and fr["ru"] == " Париж" and fr["zh"] == "巴黎" and fr["ja"] == "パリ"
    assert fr["hi"] == " पेरिस" and fr["ar"] == " باريس"
    assert by_id["JP-currency"].original["ja"] == "日本円"
    assert by_id["DE-language"].original["de"] == " Deutsch"
    assert by_id["BR-continent"].original["ja"] == "南アメリカ"
    # The counterfactual is another country's value of the same relation, the same one in every language.
    rec = by_id["FR-capital"]
    other = next(r for r in full if r.relation == "capital" and r.meta["true_key"] == rec.meta["new_key"])
    assert rec.target == other.original


def test_counts_of_the_full_build(full):
    relations = Counter(rec.relation for rec in full)
    assert relations["capital"] >= 140 and min(relations.values()) >= 140
    assert len({rec.country for rec in full}) >= 200
    assert language_counts(full) == dict.fromkeys(DEFAULT_LANGUAGES, len(full))


def test_splits_are_by_country_deterministic_and_follow_the_fractions(records, full):
    assert build_counterfactual_records(max_countries=SMALL) == records
    split_of = {}
    for rec in full:
        assert split_of.setdefault(rec.country, rec.split) == rec.split
    sizes = Counter(split_of.values())
    total = sum(sizes.values())
    assert abs(sizes["train"] / total - 0.6) < 0.01 and abs(sizes["test"] / total - 0.3) < 0.01
    assert sizes["validation"] > 0
    other_seed = build_counterfactual_records(max_countries=SMALL, seed=1)
    assert [r.id for r in other_seed] != [r.id for r in records]
    only = build_counterfactual_records(max_countries=SMALL, splits=["validation"])
    assert only and {r.split for r in only} == {"validation"}
    # A country's split does not depend on the relations asked for.
    capitals = build_counterfactual_records(relations=["capital"])
    assert capitals and all(r.split == split_of[r.country] for r in capitals)


def test_neighbours_and_unrelated_prompts_come_from_another_split(full):
    split_of = {rec.country: rec.split for rec in full}
    for rec in full[::7]:
        kinds = Counter(n.meta["kind"] for n in rec.neighbours)
        same_country = [n for n in rec.neighbours if n.meta["kind"] == "same_country"]
        assert all(n.meta["country"] == rec.country and n.meta["relation"] != rec.relation for n in same_country)
        assert kinds["same_relation"] == 3
        for n in rec.neighbours:
            if n.meta["kind"] == "same_relation":
                assert n.meta["relation"] == rec.relation and n.meta["country"] != rec.country
                assert split_of[n.meta["country"]] != rec.split
            assert list(n.prompt) == list(rec.prompt)
        assert len(rec.locality) == 2 * len(DEFAULT_LANGUAGES) == len(rec.meta["locality_languages"])
        assert not any(text in rec.locality for text in rec.prompt.values())


def test_rephrases_are_sentences_that_end_before_the_value(full):
    rec = next(r for r in full if r.id == "FR-capital")
    assert rec.rephrases["en"][0] == "The capital of France is"
    assert rec.rephrases["fr"] == ["La capitale de la France est"]
    assert rec.rephrases["zh"] == ["法国的首都是"]
    assert "ja" not in rec.rephrases  # no sentence templates in Japanese
    for r in full:
        for lang, prompts in r.rephrases.items():
            assert all("{" not in p and p == p.rstrip() for p in prompts), (r.id, lang)


def test_json_round_trip(records, tmp_path):
    path = write_generation_records(records, tmp_path / "cf.jsonl")
    back = read_counterfactual_records(path)
    assert back == records
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["original"]


@pytest.mark.parametrize(
    ("change", "field", "match"),
    [
        ({"original": {"fr": " Paris"}}, "original", "one true answer per prompt language"),
        ({"neighbours": "x"}, "neighbours", "list"),
        ({"neighbours": [{"id": "n", "prompt": {"en": "a"}}]}, "neighbours", "entry 0"),
        ({"label": 1}, "label", "not part of the schema"),
        ({"original": {"en": " "}}, "original", "empty"),
    ],
)
def test_validation_names_the_field(change, field, match):
    data = {"id": "FR-capital", "prompt": {"en": "Country: France\nCapital:"}, "target": {"en": " Rome"}}
    with pytest.raises(ValueError, match=match) as info:
        CounterfactualEditRecord.from_dict({**data, **change})
    assert f"'{field}'" in str(info.value)


def test_a_language_without_templates_is_a_clear_error():
    with pytest.raises(ValueError, match=r"language 'sw' has no 'capital' prompt template.*choose languages from"):
        build_counterfactual_records(["en", "sw"], max_countries=5)
    with pytest.raises(ValueError, match="English"):
        build_counterfactual_records(["fr", "de"], max_countries=5)
    with pytest.raises(ValueError, match="unknown relations"):
        build_counterfactual_records(relations=["population"], max_countries=5)
    with pytest.raises(ValueError, match="probe_splits"):
        build_counterfactual_records(max_countries=5, probe_splits="dev")
    with pytest.raises(ValueError, match="n_neighbours"):
        build_counterfactual_records(max_countries=5, n_neighbours=-1)
    assert set(DEFAULT_LANGUAGES) <= set(prompt_languages())


def test_cldr_fills_capitals_and_continents_world_countries_lacks():
    assert cldr_capital("FR", "Paris", "ja") == "パリ"
    assert cldr_capital("CO", "Bogota", "hi") == "बोगोटा"  # accent-insensitive match of "Bogotá"
    assert cldr_capital("CN", "Beijing", "ja") is None  # Beijing is not a time-zone city (the JSON names it)
    assert continent_name("Europe", "ja") == "ヨーロッパ" and continent_name("Antarctica", "ja") is None
    countries = {c.iso2: c for c in counterfactual_countries(["en", "ja"], ["capital"])}
    assert countries["CN"].facts["capital"].values["ja"] == "北京"
    assert answer_text("巴黎", "zh") == "巴黎" and answer_text("Paris", "fr") == " Paris"
    assert set(unrelated_prompts(["en", "ja", "xx"])) == {"en", "ja"}


def test_keep_known_drops_unknown_languages_and_records(records):
    def knows(fact):
        assert fact.target == next(r for r in records if r.id == fact.id).original  # asked the true fact
        return {"en": fact.id < "M", "fr": True, "ja": fact.meta["relation"] == "capital"}

    kept = keep_known(records, knows)
    assert kept and all(r.id < "M" for r in kept)
    assert all(set(r.prompt) == ({"en", "fr", "ja"} if r.relation == "capital" else {"en", "fr"}) for r in kept)
    assert all(set(r.target) == set(r.original) == set(r.prompt) for r in kept)
    assert all(set(r.rephrases) <= set(r.prompt) for r in kept)
    assert len(keep_known(records, knows, min_languages=3)) == sum(r.relation == "capital" for r in kept)
    assert keep_known(records, knows, require=("de",)) == []


def test_one_per_country_and_fact_texts(records):
    chosen = one_per_country(records)
    assert len(chosen) == len({r.country for r in records})
    assert all(r.relation == "capital" for r in chosen if any(x.id == f"{r.country}-capital" for x in records))
    texts = fact_texts(chosen[:2], ["en"])
    assert texts == [r.prompt["en"] + r.original["en"] for r in chosen[:2]]


@pytest.mark.skipif(
    not gemma3._is_causal_lm_complete(gemma3.causal_lm_dir()), reason="the Gemma 3 cache (load_causal_lm) is absent"
)
def test_gemma_tokenizer_reads_every_target_as_new_words(full):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma3.causal_lm_dir())
    lengths = Counter()
    for rec in full:
        for lang in rec.prompt:
            for answer in (rec.target[lang], rec.original[lang]):
                body = tok(rec.prompt[lang], add_special_tokens=False)["input_ids"]
                joint = tok(rec.prompt[lang] + answer, add_special_tokens=False)["input_ids"]
                assert joint[: len(body)] == body, (rec.id, lang)  # no merge across the prompt/answer boundary
                first = tok.convert_ids_to_tokens(joint[len(body)])
                assert first.startswith("▁") == (lang not in ("zh", "ja")), (rec.id, lang, first)
                lengths[len(joint) - len(body) > 1] += 1
    assert lengths[True] > 0  # some answers are several tokens


def test_capitalize_option_and_custom_templates():
    spec = {**load_generation_templates(), "capitalize": ["fr"]}
    rec = next(
        r for r in build_counterfactual_records(["en", "fr"], ["currency"], templates=spec) if r.country == "FR"
    )
    assert rec.original["fr"] == " Euro" and rec.target["fr"][1].isupper()
    plain = next(r for r in build_counterfactual_records(["en", "fr"], ["currency"]) if r.country == "FR")
    assert plain.original["fr"] == " euro"  # CLDR's case by default
