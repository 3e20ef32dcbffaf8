"""Loaders of Bi-ZsRE and MzsRE (``peft_mpn.data.zsre``), on small hand-written fixtures in their formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_mpn.data.counterfactual import CounterfactualEditRecord, read_counterfactual_records
from peft_mpn.data.generation import GenerationEditRecord, write_generation_records
from peft_mpn.data.zsre import load_bizsre, load_mzsre, load_zsre_parallel, mzsre_files


FIXTURES = Path(__file__).parent / "fixtures"


def test_bizsre_test_file_gives_bilingual_records():
    records = load_bizsre(FIXTURES / "bizsre_test.json")
    assert [r.id for r in records] == ["bizsre-0", "bizsre-1", "bizsre-2"]
    rec = records[0]
    assert isinstance(rec, CounterfactualEditRecord) and isinstance(rec, GenerationEditRecord)
    assert rec.prompt == {"en": "Which country is Lake Bled in?", "zh": "布莱德湖位于哪个国家？"}
    assert rec.target == {"en": " Austria", "zh": "奥地利"}  # a space before English words only
    assert rec.rephrases == {"en": ["In which country is Lake Bled located?"], "zh": ["布莱德湖在哪个国家？"]}
    assert rec.locality == ["who wrote the novel moby dick?", "小说《白鲸》的作者是谁？"]  # "nq question: " dropped
    assert rec.meta["locality_languages"] == ["en", "zh"]
    (loc,) = rec.neighbours
    assert loc.meta["kind"] == "locality" and loc.target == {"en": " Herman Melville", "zh": "赫尔曼·梅尔维尔"}
    assert rec.meta["portability"]["target"] == {"en": " Vienna", "zh": "维也纳"}
    assert rec.meta["subject"] == {"en": "Lake Bled", "zh": "布莱德湖"}
    assert rec.original == {}  # the test file has no answer before the edit
    assert len(load_bizsre(FIXTURES / "bizsre_test.json", limit=2)) == 2


def test_prompt_template_applies_to_every_question():
    rec = load_bizsre(FIXTURES / "bizsre_test.json", prompt_template="Question: {question}\nAnswer:")[1]
    assert rec.prompt["en"] == "Question: Who composed Ode to Joy?\nAnswer:"
    assert rec.rephrases["zh"] == ["Question: 谁创作了《欢乐颂》？\nAnswer:"]
    assert rec.neighbours[0].prompt["en"] == "Question: how many strings does a violin have?\nAnswer:"
    assert rec.meta["portability"]["prompt"]["en"].startswith("Question: In which city")
    with pytest.raises(ValueError, match=r"prompt_template .* only the field \{question\}"):
        load_bizsre(FIXTURES / "bizsre_test.json", prompt_template="{q}")


def test_parallel_mend_files_join_by_position_with_the_old_answers():
    records = load_zsre_parallel(
        {"en": FIXTURES / "zsre_mend_eval.json", "zh": FIXTURES / "zsre_mend_eval_chinese.json"}, source="bizsre-dev"
    )
    assert [r.id for r in records] == ["bizsre-dev-0", "bizsre-dev-1"]
    assert records[0].original == {"en": " Slovenia", "zh": "斯洛文尼亚"}
    assert records[1].fact_record().target["en"] == " Ludwig van Beethoven"
    assert records[1].target["zh"] == "约翰·塞巴斯蒂安·巴赫"
    with pytest.raises(ValueError, match="English"):
        load_zsre_parallel({"zh": FIXTURES / "zsre_mend_eval_chinese.json"})


def test_mzsre_folder_joins_the_pairs_with_iso_codes():
    assert sorted(mzsre_files(FIXTURES / "mzsre")) == ["cz", "de", "zh"]
    records = load_mzsre(FIXTURES / "mzsre")
    assert len(records) == 2
    rec = records[0]
    assert set(rec.prompt) == {"en", "cs", "de", "zh"} and rec.languages[0] == "en"
    assert rec.target["cs"] == " Rakousko" and rec.target["de"] == " Österreich" and rec.target["zh"] == "奥地利"
    assert set(rec.neighbours[0].prompt) == {"en", "cs", "de", "zh"}
    assert set(load_mzsre(FIXTURES / "mzsre", iso_codes=False)[0].prompt) == {"en", "cz", "de", "zh"}
    only = load_mzsre(FIXTURES / "mzsre", languages=["cz", "zh"])[1]
    assert set(only.prompt) == {"en", "cs", "zh"}
    single = load_mzsre(FIXTURES / "mzsre" / "mzsre_test_duplicate_ende.json")
    assert set(single[1].prompt) == {"en", "de"} and single[1].target["de"] == " Johann Sebastian Bach"


def test_records_round_trip_through_jsonl(tmp_path):
    records = load_mzsre(FIXTURES / "mzsre")
    path = write_generation_records(records, tmp_path / "mzsre.jsonl")
    assert read_counterfactual_records(path) == records


def _write(tmp_path: Path, data, name="bad.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def _bizsre() -> list:
    return json.loads((FIXTURES / "bizsre_test.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d[1]["zh"].pop("alt"), r"item 1, language 'zh': field 'alt' is missing"),
        (lambda d: d[0]["en"].update(src=""), r"item 0, language 'en': field 'src' must be a non-empty string"),
        (lambda d: d[2]["en"].update(rephrase=["x"]), r"item 2, language 'en': field 'rephrase'"),
        (lambda d: d[0]["zh"].pop("loc_ans"), r"item 0, language 'zh': fields 'loc' and 'loc_ans'"),
        (lambda d: d[0]["en"].update(portability={"New Question": "q"}), r"field 'portability' needs"),
        (lambda d: d[1].pop("en"), r"item 1: has no English \('en'\) entry"),
        (lambda d: d.__setitem__(0, ["en"]), r"item 0: must be an object mapping language codes"),
        (lambda d: d[0].update(zh="text"), r"item 0, language 'zh': a zsRE entry must be a JSON object"),
    ],
)
def test_malformed_files_name_the_item_language_and_field(tmp_path, mutate, match):
    data = _bizsre()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=match) as info:
        load_bizsre(path)
    assert str(path) in str(info.value)


def test_bad_files_and_folders(tmp_path):
    with pytest.raises(ValueError, match="JSON list"):
        load_bizsre(_write(tmp_path, {"en": {}}))
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_bizsre(broken)
    with pytest.raises(FileNotFoundError):
        load_bizsre(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="no mzsre_test_duplicate"):
        load_mzsre(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_mzsre(tmp_path / "nowhere")
    # Files that are not parallel: a different English question, or a different length.
    folder = tmp_path / "mz"
    folder.mkdir()
    de = json.loads((FIXTURES / "mzsre" / "mzsre_test_duplicate_ende.json").read_text(encoding="utf-8"))
    zh = json.loads((FIXTURES / "mzsre" / "mzsre_test_duplicate_enzh.json").read_text(encoding="utf-8"))
    _write(folder, de, "mzsre_test_duplicate_ende.json")
    zh[1]["en"]["src"] = "Who wrote Ode to Joy?"
    _write(folder, zh, "mzsre_test_duplicate_enzh.json")
    with pytest.raises(ValueError, match=r"item 1: English 'src' .* not parallel"):
        load_mzsre(folder)
    _write(folder, zh[:1], "mzsre_test_duplicate_enzh.json")
    with pytest.raises(ValueError, match="has 1 items but"):
        load_mzsre(folder)
    with pytest.raises(ValueError, match="as many items"):
        load_zsre_parallel({"en": FIXTURES / "zsre_mend_eval.json", "zh": _write(tmp_path, [], "empty.json")})
    with pytest.raises(ValueError, match=r"item 0: field 'answers' must be a list"):
        mend = json.loads((FIXTURES / "zsre_mend_eval.json").read_text(encoding="utf-8"))
        mend[0].pop("pred")
        mend[0]["answers"] = "Slovenia"
        load_zsre_parallel({"en": _write(tmp_path, mend, "mend.json")})
