"""Tests of the offline country-facts benchmark (``peft_mpn.data``): real data, no network."""

from __future__ import annotations

import json
import string
from collections import Counter, defaultdict

import pytest

from peft_mpn.data import (
    RELATION_LANGUAGES,
    RELATIONS,
    XNLI_LANGUAGES,
    build_benchmark,
    build_claims,
    load_countries,
    load_templates,
    read_jsonl,
    to_edit_records,
    validate_record,
    write_jsonl,
)


SMALL = 24  # countries in the quick builds


@pytest.fixture(scope="module")
def bench():
    return build_benchmark(seed=0, max_countries=SMALL)


@pytest.fixture(scope="module")
def rows(bench):
    return [row for split in bench for row in bench[split]]


@pytest.fixture(scope="module")
def records():
    return to_edit_records(seed=0, max_countries=SMALL)


def test_real_data_counts():
    countries = load_countries()
    assert len(countries) == 246  # 247 world-countries entries minus AN (not a CLDR territory)
    have = Counter(rel for c in countries for rel in c.facts)
    # 241 countries have a capital in all 7 languages; 4 are left out on purpose (outdated or disputed).
    assert have["capital"] == 237
    assert have["continent"] >= 235 and have["currency"] >= 240 and have["language"] >= 240


def test_same_seed_same_output():
    a = build_benchmark(seed=7, max_countries=16)
    b = build_benchmark(seed=7, max_countries=16)
    assert list(a) == list(b)
    for split in a:
        assert a[split].to_list() == b[split].to_list()
    assert to_edit_records(seed=7, max_countries=10) == to_edit_records(seed=7, max_countries=10)
    c = build_benchmark(seed=8, max_countries=16)
    assert {s: set(a[s]["country"]) for s in a} != {s: set(c[s]["country"]) for s in c}


def test_country_splits_are_disjoint(bench):
    assert list(bench) == ["train", "validation", "test"]
    countries = {split: set(bench[split]["country"]) for split in bench}
    assert not countries["train"] & countries["validation"]
    assert not countries["train"] & countries["test"]
    assert not countries["validation"] & countries["test"]
    sizes = {split: len(c) for split, c in countries.items()}
    assert sum(sizes.values()) == SMALL
    assert sizes["train"] > sizes["test"] > sizes["validation"] > 0
    for split in bench:
        assert set(bench[split]["split"]) == {split}


def test_full_build_splits_every_country_once():
    claims = build_claims(languages=["en"], relations=["currency"], seed=1)
    split_of = {}
    for claim in claims:
        assert split_of.setdefault(claim.country, claim.split) == claim.split
    counts = Counter(split_of.values())
    assert abs(counts["train"] / len(split_of) - 0.6) < 0.01 and abs(counts["test"] / len(split_of) - 0.3) < 0.01


def test_every_language_present_for_each_relation(rows):
    langs = defaultdict(set)
    for row in rows:
        langs[row["group_id"]].add(row["lang"])
    for group_id, seen in langs.items():
        relation = group_id.split("-")[1]
        assert seen == set(RELATION_LANGUAGES[relation]), group_id
    assert set(RELATION_LANGUAGES["capital"]) == {"en", "de", "es", "fr", "ru", "ar", "zh"}
    assert set(RELATION_LANGUAGES["currency"]) == set(XNLI_LANGUAGES) == set(RELATION_LANGUAGES["language"])
    assert {row["relation"] for row in rows} == set(RELATIONS)


def test_labels_balanced(rows):
    counts = Counter((row["relation"], row["label"]) for row in rows)
    for relation in RELATIONS:
        true, false = counts[(relation, 1)], counts[(relation, 0)]
        assert true > 0 and abs(true - false) <= 0.1 * (true + false)


def test_false_claims_swap_in_a_different_value(rows):
    facts = {c.iso2: c.facts for c in load_countries()}
    false_rows = [row for row in rows if row["label"] == 0]
    assert false_rows
    for row in false_rows:
        assert row["value"] != row["true_value"]
        assert row["value_key"] != row["true_key"]
        assert row["value_key"] not in facts[row["country"]][row["relation"]].also_true
        # German inflects adjectives (der Ghanaische Cedi); a claim starting with the value is capitalised.
        assert row["value"].split(" ")[-1].lower() in row["text"].lower()
    for row in rows:
        if row["label"] == 1:
            assert row["value"] == row["true_value"] and row["value_key"] == row["true_key"]


def test_claims_do_not_depend_on_max_countries(rows):
    full = {(c.id, lang): text for c in build_claims(relations=["capital"]) for lang, text in c.texts.items()}
    for row in rows:
        if row["relation"] == "capital":
            assert row["text"] == "query: " + full[(row["group_id"], row["lang"])]


def test_prefix_is_configurable(bench):
    assert all(text.startswith("query: ") for text in bench["train"]["text"])
    bare = build_benchmark(seed=0, max_countries=4, prefix="", relations=["continent"], languages=["en", "de"])
    texts = [t for split in bare for t in bare[split]["text"]]
    assert texts and not any(t.startswith("query: ") for t in texts)
    assert {lang for split in bare for lang in bare[split]["lang"]} == {"en", "de"}


def test_paraphrase_rows_are_english_only():
    ds = build_benchmark(seed=0, max_countries=4, include_paraphrases=True)
    extra = [row for split in ds for row in ds[split] if row["template"] != "claim"]
    assert extra and {row["lang"] for row in extra} == {"en"}
    ids = [row["id"] for split in ds for row in ds[split]]
    assert len(ids) == len(set(ids))


def test_templates_file():
    spec = load_templates()
    names = {"country", "country_of", "country_gen", "value", "value_art"}
    for relation in RELATIONS:
        by_lang = spec["templates"][relation]
        assert set(RELATION_LANGUAGES[relation]) <= set(by_lang), relation
        assert len(by_lang["en"]["paraphrases"]) >= 2, relation
        if "paraphrases_plural" in by_lang["en"]:
            assert len(by_lang["en"]["paraphrases_plural"]) == len(by_lang["en"]["paraphrases"])
        for lang, entry in by_lang.items():
            variants = [entry["claim"], entry.get("claim_plural", "")]
            for template in [*variants, *entry.get("paraphrases", []), *entry.get("paraphrases_plural", [])]:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
                assert fields <= names, (relation, lang, template)
                assert "{value" in template or not template


def test_known_facts_come_out_right():
    claims = {c.id: c for c in build_claims(seed=0)}
    assert "Paris" in claims["FR-capital-true"].texts["fr"]
    assert claims["FR-capital-true"].texts["fr"] == "La capitale de la France est Paris."
    assert claims["DE-capital-true"].texts["de"] == "Die Hauptstadt von Deutschland ist Berlin."
    assert claims["US-capital-true"].texts["en"] == "The capital of the United States is Washington."
    assert claims["CH-capital-true"].texts["de"] == "Die Hauptstadt von der Schweiz ist Bern."
    assert claims["JP-capital-true"].texts["zh"] == "日本的首都是东京。"
    assert claims["BR-continent-true"].texts["es"] == "Brasil se encuentra en América del Sur."
    assert claims["US-continent-true"].texts["fr"] == "Les États-Unis se trouvent en Amérique du Nord."
    assert claims["JP-currency-true"].texts["en"] == "The official currency of Japan is the Japanese Yen."
    assert claims["FR-currency-true"].texts["fr"] == "La monnaie officielle de la France est l'euro."
    assert claims["FR-currency-true"].texts["tr"] == "Euro, Fransa'nın resmî para birimidir."
    assert claims["HR-currency-true"].key == "EUR"  # CLDR history, not world-countries' outdated HRK
    assert claims["BR-language-true"].texts["en"] == "Portuguese is an official language of Brazil."
    assert claims["FO-continent-true"].texts["en"] == "The Faroe Islands are located in Europe."
    assert claims["FO-continent-true"].texts["de"] == "Die Färöer liegen in Europa."
    assert claims["DE-language-true"].texts["ru"] == "Немецкий является официальным языком страны Германия."
    assert "FR-capital-false" in claims and "Paris" not in claims["FR-capital-false"].texts["fr"]


def test_records_validate(records):
    assert records
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    for record in records:
        relation = record["meta"]["relation"]
        validate_record(record, languages=RELATION_LANGUAGES[relation])
        assert "en" in record["inputs"]
        assert all(text.startswith("query: ") for text in record["inputs"].values())
        assert len(record["rephrases"]["en"]) >= 2
        assert record["rephrases"]["en"][0] != record["inputs"]["en"]
        assert len(record["locality"]) == 3
        assert record["neighbours"], record["id"]
        assert record["neighbours"][0]["label"] == 1 - record["label"]
        json.dumps(record)


def test_record_neighbours_and_locality(records):
    by_country = defaultdict(list)
    for record in records:
        by_country[record["meta"]["country"]].append(record)
    texts_of = {iso: {t for r in recs for t in r["inputs"].values()} for iso, recs in by_country.items()}
    split_of = {r["meta"]["country"]: r["meta"]["split"] for r in records}
    text_country = {t: iso for iso, texts in texts_of.items() for t in texts}
    for record in records:
        iso = record["meta"]["country"]
        assert len(record["neighbours"]) == len(by_country[iso]) - 1
        for neighbour in record["neighbours"]:
            assert set(neighbour["inputs"].values()) <= texts_of[iso]
            assert neighbour["inputs"] != record["inputs"]
        for text in record["locality"]:
            assert text not in texts_of[iso]
            # Locality claims come from the validation split, which is never edited.
            assert split_of[text_country[text]] == "validation"


def test_locality_split_none_keeps_own_split(records):
    same = to_edit_records(seed=0, max_countries=SMALL, locality_split=None, splits=["test"])
    split_of = {r["meta"]["country"]: r["meta"]["split"] for r in records}
    text_country = {t: r["meta"]["country"] for r in records for t in r["inputs"].values()}
    assert same and all(split_of[text_country[t]] == "test" for r in same for t in r["locality"])
    with pytest.raises(ValueError, match="locality_split"):
        to_edit_records(max_countries=SMALL, locality_split="dev")


def test_records_need_english():
    with pytest.raises(ValueError, match="en"):
        to_edit_records(languages=["fr", "de"], max_countries=2)


def test_validate_record_rejects_bad_records(records):
    bad = dict(records[0])
    bad["inputs"] = {"fr": "query: x"}
    with pytest.raises(ValueError, match="'en'"):
        validate_record(bad)
    with pytest.raises(ValueError, match="languages"):
        validate_record(records[0], languages=["en"])


def test_jsonl_round_trip(records, tmp_path):
    path = tmp_path / "out" / "records.jsonl"
    assert write_jsonl(records, path) == path
    assert read_jsonl(path) == records
    write_jsonl(records[:2], path)  # overwrite in place
    assert read_jsonl(path) == records[:2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["records.jsonl"]  # no temporary file left


def test_write_jsonl_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl([{"a": 1}], path)
    with pytest.raises(TypeError):
        write_jsonl([{"a": 2}, {"b": object()}], path)
    assert read_jsonl(path) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="sum to 1"):
        build_claims(split_fractions={"train": 0.5, "test": 0.2})
    with pytest.raises(ValueError, match="unknown relations"):
        build_claims(relations=["anthem"])
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match="max_countries must be an int >= 1"):
            build_claims(max_countries=bad)
    with pytest.raises(ValueError, match="no relation"):
        build_claims(languages=["bg"], relations=["capital"])  # capitals come in the 7 world-countries languages
    with pytest.raises(ValueError, match=r"languages \['xx'\] have no claim templates; choose from \['ar', "):
        build_claims(languages=["en", "xx"], relations=["capital"])  # not babel's UnknownLocaleError
    claims = build_claims(relations=["capital"], languages=["en"], split_fractions=(0.5, 0.0, 0.5), max_countries=6)
    assert Counter(c.split for c in claims if c.label == 1) == {"train": 3, "test": 3}


def test_records_match_the_edit_record_schema(records, tmp_path):
    schema = pytest.importorskip("peft_mpn.data.records")  # the editing engine's schema (another module's owner)
    for record in records:
        schema.EditRecord.from_dict(record, languages=XNLI_LANGUAGES)
    path = write_jsonl(records, tmp_path / "records.jsonl")
    assert [r.id for r in schema.read_records(path, languages=XNLI_LANGUAGES)] == [r["id"] for r in records]
