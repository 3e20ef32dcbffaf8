"""The edit-record schema: validation errors that name the record and field, JSONL reading and atomic writing."""

from __future__ import annotations

import copy
import json
import re

import pytest

import peft_mpn.utils.io as io_module
from peft_mpn.data.records import EditRecord, read_records, write_records


FULL = {
    "id": "fr-capital",
    "inputs": {"en": "The capital of France is Lyon.", "fr": "La capitale de la France est Lyon.", "zh-Hant": "法國"},
    "label": 0,
    "rephrases": {"en": ["Lyon is the capital city of France."], "fr": ["Lyon est la capitale."]},
    "locality": ["Water boils at 100 C."],
    "neighbours": [{"inputs": {"en": "The capital of France is Paris."}, "label": 1}],
    "meta": {"relation": "capital", "subject": "France"},
}


def with_changes(**changes):
    data = copy.deepcopy(FULL)
    for key, value in changes.items():
        if value is KeyError:
            data.pop(key)
        else:
            data[key] = value
    return data


# ---------------------------------------------------------------------- from_dict / to_dict
def test_full_record_round_trips():
    record = EditRecord.from_dict(FULL)
    assert record.id == "fr-capital" and record.label == 0
    assert record.languages == ["en", "fr", "zh-Hant"] and record.text("fr") == FULL["inputs"]["fr"]
    assert record.rephrases == FULL["rephrases"] and record.locality == FULL["locality"]
    assert record.neighbours == FULL["neighbours"] and record.meta == FULL["meta"]
    assert record.to_dict() == FULL
    assert EditRecord.from_dict(record.to_dict()) == record
    assert EditRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_minimal_record_and_to_dict_drops_empty_fields():
    record = EditRecord.from_dict({"id": 7, "inputs": {"en": "x"}, "label": 0}, languages=["en"])
    assert record.id == "7"  # int ids become strings
    assert record.to_dict() == {"id": "7", "inputs": {"en": "x"}, "label": 0}  # label 0 is kept
    unlabelled = EditRecord.from_dict({"id": "u", "inputs": {"en": "x"}}, require_label=False)
    assert unlabelled.label is None and unlabelled.to_dict() == {"id": "u", "inputs": {"en": "x"}}


def test_from_dict_does_not_alias_the_input():
    data = copy.deepcopy(FULL)
    record = EditRecord.from_dict(data)
    data["inputs"]["de"] = "changed"
    data["locality"].append("changed")
    assert "de" not in record.inputs and record.locality == FULL["locality"]


@pytest.mark.parametrize(
    "changes, field, detail",
    [
        ({"colour": "red"}, "colour", "not part of the schema"),
        ({"inputs": {}}, "inputs", "non-empty map"),
        ({"inputs": KeyError}, "inputs", "non-empty map"),
        ({"inputs": ["The capital"]}, "inputs", "non-empty map"),
        ({"inputs": {"en": "   "}}, "inputs", "'en'"),
        ({"inputs": {"en": 3}}, "inputs", "'en'"),
        ({"inputs": {"EN": "x"}}, "inputs", "'EN'"),
        ({"inputs": {"english": "x"}}, "inputs", "not a language code"),
        ({"inputs": {"fr": "La capitale."}}, "inputs", "English"),
        ({"label": KeyError}, "label", "missing"),
        ({"label": None}, "label", "missing"),
        ({"label": -1}, "label", "-1"),
        ({"label": True}, "label", "True"),
        ({"label": "1"}, "label", "'1'"),
        ({"label": 1.0}, "label", "1.0"),
        ({"rephrases": ["a"]}, "rephrases", "must map"),
        ({"rephrases": {"en": "a"}}, "rephrases", "'en'"),
        ({"rephrases": {"en": ["ok", ""]}}, "rephrases", "'en'"),
        ({"rephrases": {"xx-!": ["a"]}}, "rephrases", "not a language code"),
        ({"locality": "Water is wet."}, "locality", "list of non-empty texts"),
        ({"locality": ["ok", 3]}, "locality", "list of non-empty texts"),
        ({"neighbours": {"inputs": {"en": "x"}, "label": 1}}, "neighbours", "must be a list"),
        ({"neighbours": [{"inputs": {"en": "x"}}]}, "neighbours", "int 'label'"),
        ({"neighbours": ["x"]}, "neighbours", "int 'label'"),
        ({"neighbours": [{"inputs": {"en": "x"}, "label": True}]}, "neighbours", "non-negative int 'label'"),
        ({"neighbours": [{"inputs": {"en": "x"}, "label": -3}]}, "neighbours", "non-negative int 'label'"),
        ({"neighbours": [{"inputs": {}, "label": 1}]}, "neighbours", "non-empty map"),
        ({"meta": ["capital"]}, "meta", "JSON object"),
    ],
)
def test_invalid_records_name_the_id_and_field(changes, field, detail):
    with pytest.raises(ValueError) as info:
        EditRecord.from_dict(with_changes(**changes))
    message = str(info.value)
    assert "'fr-capital'" in message and f"field {field!r}" in message and detail in message


@pytest.mark.parametrize("field", ["inputs", "rephrases", "neighbours"])
def test_unknown_language_when_languages_are_given(field):
    data = copy.deepcopy(FULL)
    data["inputs"].pop("zh-Hant")
    if field == "inputs":
        data["inputs"]["de"] = "Die Hauptstadt."
    elif field == "rephrases":
        data["rephrases"]["de"] = ["Die Hauptstadt."]
    else:
        data["neighbours"][0]["inputs"]["de"] = "Die Hauptstadt."
    assert EditRecord.from_dict(data, languages=["en", "fr", "de"]).id == "fr-capital"
    with pytest.raises(ValueError, match=rf"'fr-capital'.*field '{field}'.*'de'.*\['en', 'fr'\]"):
        EditRecord.from_dict(data, languages=["en", "fr"])


@pytest.mark.parametrize("record_id", [None, "", True, 1.5, ["x"]])
def test_bad_id(record_id):
    data = with_changes(id=record_id)
    with pytest.raises(ValueError, match="field 'id'"):
        EditRecord.from_dict(data)


@pytest.mark.parametrize("data", [["fr-capital"], "fr-capital", None, 3])
def test_non_dict_record_is_a_type_error(data):
    with pytest.raises(TypeError, match="JSON object"):
        EditRecord.from_dict(data)


# ---------------------------------------------------------------------- read_records
def _lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_records_skips_blank_lines(tmp_path):
    second = {"id": "b", "inputs": {"en": "y", "fr": "y_fr"}, "label": 1}
    path = _lines(tmp_path / "edits.jsonl", json.dumps(FULL), "", "   ", json.dumps(second), "")
    records = read_records(path)
    assert [r.id for r in records] == ["fr-capital", "b"]
    assert records[0] == EditRecord.from_dict(FULL)


def test_read_records_passes_languages_and_require_label(tmp_path):
    path = _lines(tmp_path / "edits.jsonl", json.dumps({"id": "a", "inputs": {"en": "x", "de": "x_de"}}))
    assert read_records(path, require_label=False)[0].label is None
    with pytest.raises(ValueError, match=r"edits.jsonl:1: .*'a'.*field 'label'"):
        read_records(path)
    with pytest.raises(ValueError, match=r"edits.jsonl:1: .*field 'inputs'.*'de'"):
        read_records(path, languages=["en"], require_label=False)


def test_read_records_bad_json_names_file_and_line(tmp_path):
    path = _lines(tmp_path / "edits.jsonl", json.dumps(FULL), "", '{"id": "b", "inputs": ')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'edits.jsonl'}:3: not valid JSON")):
        read_records(path)


def test_read_records_bad_record_names_file_line_id_and_field(tmp_path):
    bad = {"id": "b", "inputs": {"en": "x"}, "label": -2}
    path = _lines(tmp_path / "edits.jsonl", json.dumps(FULL), json.dumps(bad))
    with pytest.raises(ValueError, match=r"edits.jsonl:2: edit record 'b': field 'label'"):
        read_records(path)


def test_read_records_non_object_line(tmp_path):
    path = _lines(tmp_path / "edits.jsonl", "[1, 2]")
    with pytest.raises(ValueError, match=r"edits.jsonl:1: .*JSON object"):
        read_records(path)


def test_read_records_duplicate_id_names_the_later_line(tmp_path):
    path = _lines(tmp_path / "edits.jsonl", json.dumps(FULL), "", json.dumps(FULL))
    with pytest.raises(ValueError, match=r"edits.jsonl:3: edit record 'fr-capital': field 'id' repeats"):
        read_records(path)


def test_read_records_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------- write_records
def test_write_records_round_trips_and_leaves_no_temp_files(tmp_path):
    records = [
        EditRecord.from_dict(FULL),
        {"id": "b", "inputs": {"en": "Zürich", "de": "Zürich ist"}, "label": 1},  # dicts are written as given
    ]
    path = write_records(records, tmp_path / "sub" / "edits.jsonl")
    assert path == tmp_path / "sub" / "edits.jsonl"
    assert sorted(p.name for p in path.parent.iterdir()) == ["edits.jsonl"]
    assert "Zürich" in path.read_text(encoding="utf-8")  # not escaped
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    back = read_records(path)
    assert back == [records[0], EditRecord.from_dict(records[1])]
    write_records(back, path)  # overwrite
    assert read_records(path) == back
    assert sorted(p.name for p in path.parent.iterdir()) == ["edits.jsonl"]


def test_write_records_keeps_the_old_file_when_a_record_cannot_be_serialised(tmp_path):
    path = write_records([FULL], tmp_path / "edits.jsonl")
    before = path.read_bytes()
    unserialisable = {"id": "x", "inputs": {"en": "x"}, "label": 0, "meta": {"when": object()}}
    with pytest.raises(TypeError):
        write_records([FULL, unserialisable], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["edits.jsonl"]


def test_write_records_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = write_records([FULL], tmp_path / "edits.jsonl")
    before = path.read_bytes()

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io_module.os, "fsync", fail)  # fails after the temp file is written, before the rename
    with pytest.raises(OSError, match="disk full"):
        write_records([{"id": "other", "inputs": {"en": "y"}, "label": 1}], path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["edits.jsonl"]  # the temp file was removed
