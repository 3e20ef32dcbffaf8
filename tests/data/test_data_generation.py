"""Generation edit records: schema, validation errors that name the field, JSONL round trip."""

from __future__ import annotations

import json

import pytest

from peft_mpn import GenerationEditRecord, read_generation_records, write_generation_records


GOOD = {
    "id": "fr-capital",
    "prompt": {"en": "The capital of France is", "fr": "La capitale de la France est"},
    "target": {"en": " Lyon", "fr": " Lyon"},
    "rephrases": {"en": ["France's capital city is"]},
    "locality": ["The largest ocean is"],
    "meta": {"relation": "capital"},
}


def test_from_dict_keeps_every_field_and_round_trips():
    rec = GenerationEditRecord.from_dict(GOOD)
    assert rec.languages == ["en", "fr"]
    assert rec.target["fr"] == " Lyon"  # the leading space is kept: it is part of the answer's first token
    assert rec.text("en") == "The capital of France is Lyon"
    assert rec.rephrases == {"en": ["France's capital city is"]} and rec.locality == ["The largest ocean is"]
    assert GenerationEditRecord.from_dict(rec.to_dict()) == rec
    minimal = GenerationEditRecord.from_dict({"id": 7, "prompt": {"en": "a"}, "target": {"en": "b"}})
    assert minimal.id == "7" and minimal.to_dict() == {"id": "7", "prompt": {"en": "a"}, "target": {"en": "b"}}


@pytest.mark.parametrize(
    ("change", "field", "match"),
    [
        ({"prompt": None}, "prompt", "map from language code"),
        ({"prompt": {"fr": "x"}, "target": {"fr": "y"}}, "prompt", "English"),
        ({"target": {"en": " Lyon"}}, "target", r"no answer for prompt languages \['fr'\]"),
        ({"target": {"en": " Lyon", "fr": " Lyon", "de": " Lyon"}}, "target", r"\['de'\], which have no prompt"),
        ({"target": {"en": " ", "fr": " Lyon"}}, "target", "empty"),
        ({"rephrases": {"de": ["Die Hauptstadt ist"]}}, "rephrases", "no target"),
        ({"rephrases": {"en": "not a list"}}, "rephrases", "list of non-empty prompts"),
        ({"locality": "one string"}, "locality", "list of non-empty prompts"),
        ({"meta": ["x"]}, "meta", "JSON object"),
        ({"prompt": {"en": "x", "French": "y"}, "target": {"en": "a", "French": "b"}}, "prompt", "language code"),
        ({"label": 1}, "label", "read_records"),
    ],
)
def test_validation_names_record_and_field(change, field, match):
    data = {**GOOD, **change}
    if change.get("prompt") is None and "prompt" in change:
        del data["prompt"]
    with pytest.raises(ValueError, match=match) as info:
        GenerationEditRecord.from_dict(data)
    assert "'fr-capital'" in str(info.value) and f"'{field}'" in str(info.value)


def test_missing_target_and_bad_types():
    with pytest.raises(ValueError, match="'target' is missing"):
        GenerationEditRecord.from_dict({"id": "x", "prompt": {"en": "a"}})
    with pytest.raises(ValueError, match="'id'"):
        GenerationEditRecord.from_dict({"prompt": {"en": "a"}, "target": {"en": "b"}})
    with pytest.raises(TypeError, match="JSON object"):
        GenerationEditRecord.from_dict(["not", "a", "dict"])
    with pytest.raises(ValueError, match=r"not one of \['en'\]"):
        GenerationEditRecord.from_dict(GOOD, languages=["en"])


def test_jsonl_round_trip_and_errors_with_line_numbers(tmp_path):
    other = {"id": "b", "prompt": {"en": "x"}, "target": {"en": " y"}}
    path = write_generation_records([GOOD, other], tmp_path / "e.jsonl")
    records = read_generation_records(path)
    assert [r.id for r in records] == ["fr-capital", "b"]
    assert records[0] == GenerationEditRecord.from_dict(GOOD)

    lines = path.read_text(encoding="utf-8").splitlines()
    dup = tmp_path / "dup.jsonl"
    dup.write_text(lines[0] + "\n\n" + lines[0] + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dup.jsonl:3: .*'id' repeats"):
        read_generation_records(dup)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_generation_records(bad)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"id": "c", "inputs": {"en": "x"}, "label": 0}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"wrong.jsonl:1: .*'inputs' is not part of the schema"):
        read_generation_records(wrong)
    with pytest.raises(ValueError, match="'target'"):
        write_generation_records([{"id": "d", "prompt": {"en": "x"}}], tmp_path / "never.jsonl")
    assert not (tmp_path / "never.jsonl").exists()
