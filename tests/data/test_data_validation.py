"""Checks shared by the record schemas: errors name the record and the field; the JSONL reader names file and line."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from peft_mpn.data.validation import (
    check_language,
    field_error,
    json_object,
    read_jsonl_records,
    record_id_of,
    text_list,
    text_lists,
    text_map,
)


def test_field_error_names_record_and_field():
    error = field_error("r1", "inputs", "is empty.")
    assert isinstance(error, ValueError) and str(error) == "edit record 'r1': field 'inputs' is empty."


def test_record_id_of_checks_type_id_and_fields():
    assert record_id_of({"id": 7, "a": 1}, ("id", "a")) == "7"
    with pytest.raises(TypeError, match="a toy record must be a JSON object, got list"):
        record_id_of(["x"], ("id",), what="a toy record")
    for bad in (None, "", " ", True, 1.5):
        with pytest.raises(ValueError, match="field 'id' must be a non-empty string"):
            record_id_of({"id": bad}, ("id",))
    with pytest.raises(ValueError, match=r"field 'b' is not part of the schema; allowed fields are \['id', 'a'\]\.$"):
        record_id_of({"id": "x", "b": 1}, ("id", "a"))
    with pytest.raises(ValueError, match=r"field 'a' .*\['id'\] \(use the other reader\)\.$"):
        record_id_of({"id": "x", "a": 1, "b": 2}, ("id",), hints={"b": " (use the other reader)"})


def test_language_codes():
    check_language("r", "inputs", "zh-Hant", None)
    with pytest.raises(ValueError, match="'English', which is not a language code"):
        check_language("r", "inputs", "English", None)
    with pytest.raises(ValueError, match=r"language 'de', which is not one of \['en', 'fr'\]"):
        check_language("r", "inputs", "de", {"en", "fr"})


def test_text_map_names_its_texts():
    assert text_map("r", "target", {"en": " Lyon"}, None) == {"en": " Lyon"}
    with pytest.raises(ValueError, match="field 'target' must be a non-empty map from language code to answers"):
        text_map("r", "target", {}, None, noun="answers")
    with pytest.raises(ValueError, match="non-text answer for 'en'"):
        text_map("r", "target", {"en": " "}, None, entry="answer")
    with pytest.raises(ValueError, match="not a language code"):
        text_map("r", "target", {"EN": "x"}, None)


def test_text_lists_and_text_list():
    assert text_lists("r", "rephrases", None, None) == {} and text_list("r", "locality", None) == []
    assert text_lists("r", "rephrases", {"en": ["a", "b"]}, {"en"}) == {"en": ["a", "b"]}
    with pytest.raises(ValueError, match="must map language codes to lists of prompts"):
        text_lists("r", "rephrases", ["a"], None, noun="prompts")
    with pytest.raises(ValueError, match="must hold a list of non-empty texts for 'en'"):
        text_lists("r", "rephrases", {"en": ["a", " "]}, None)
    with pytest.raises(ValueError, match="not one of"):
        text_lists("r", "rephrases", {"de": ["a"]}, {"en"})
    with pytest.raises(ValueError, match="field 'locality' must be a list of non-empty prompts"):
        text_list("r", "locality", "one string", noun="prompts")


def test_json_object():
    assert json_object("r", "meta", None) == {} and json_object("r", "meta", {"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="field 'meta' must be a JSON object"):
        json_object("r", "meta", ["a"])


@dataclass
class Item:
    id: str


def parse(data):
    return Item(record_id_of(data, ("id",), what="an item"))


def test_read_jsonl_records_names_file_and_line(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a"}\n\n{"id": "b"}\n', encoding="utf-8")
    assert read_jsonl_records(good, parse) == [Item("a"), Item("b")]
    cases = {
        '{"id": "a"}\n{"id": "a"}\n': r"bad.jsonl:2: edit record 'a': field 'id' repeats an earlier id",
        '{"id": "a"}\nnot json\n': r"bad.jsonl:2: not valid JSON",
        '["a"]\n': r"bad.jsonl:1: an item must be a JSON object",
        '{"id": "a", "x": 1}\n': r"bad.jsonl:1: edit record 'a': field 'x' is not part of the schema",
    }
    for text, match in cases.items():
        (tmp_path / "bad.jsonl").write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=match):
            read_jsonl_records(tmp_path / "bad.jsonl", parse)
    with pytest.raises(FileNotFoundError):
        read_jsonl_records(tmp_path / "missing.jsonl", parse)
