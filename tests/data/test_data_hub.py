"""Tests of the XNLI / XFEVER loaders on tiny local fixtures; the Hub path is checked with a stand-in (no network)."""

from __future__ import annotations

import json

import datasets
import pytest

from peft_mpn.data import hub
from peft_mpn.data.hub import XFEVER_LABEL_NAMES, XNLI_LABEL_NAMES, load_xfever, load_xnli


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def xnli_dir(tmp_path):
    root = tmp_path / "xnli"
    _write(
        root / "en" / "test.jsonl",
        [
            {"premise": "A man is sleeping.", "hypothesis": "A person rests.", "label": 0},
            {"premise": "A man is sleeping.", "hypothesis": "A man runs.", "label": "contradiction"},
        ],
    )
    _write(
        root / "fr" / "test.jsonl",
        [
            {"premise": "Un homme dort.", "hypothesis": "Une personne se repose.", "label": "0"},
            {"premise": "Un homme dort.", "hypothesis": "Un homme court.", "label": 2},
        ],
    )
    _write(root / "fr" / "dev.jsonl", [{"premise": "p", "hypothesis": "h", "label": "neutral"}])
    return root


@pytest.fixture
def xfever_dir(tmp_path):
    root = tmp_path / "xfever"
    rows = {
        "en": [
            {
                "id": 75397,
                "claim": "Paris is in France.",
                "evidence": "Paris is the capital of France.",
                "page": "Paris",
                "label": "SUPPORTS",
            },
            {"id": 150448, "claim": "Paris is in Peru.", "evidence": "Paris is in France.", "label": "REFUTES"},
            {"id": 3, "claim": "Paris has many cats.", "evidence": "", "label": "NOT ENOUGH INFO"},
        ],
        "ja": [
            {"id": 75397, "claim": "パリはフランスにある。", "evidence": "パリはフランスの首都である。", "label": "S"},
            {"id": 150448, "claim": "パリはペルーにある。", "evidence": ["not", "a", "string"], "label": "R"},
        ],
    }
    for lang, lang_rows in rows.items():
        _write(root / lang / "test.jsonl", lang_rows)
        _write(root / lang / "dev.jsonl", lang_rows[:1])
    return root


def test_load_xnli_local(xnli_dir):
    dsd = load_xnli(xnli_dir, ["en", "fr"], "test")
    assert list(dsd) == ["en", "fr"]
    assert dsd["en"].features["label"].names == list(XNLI_LABEL_NAMES)
    assert dsd["en"]["label"] == [0, 2]
    assert dsd["fr"]["label"] == [0, 2]
    assert dsd["fr"][0]["premise"] == "Un homme dort."
    assert dsd["fr"].column_names == ["premise", "hypothesis", "label"]


def test_load_xnli_split_alias_and_single_language(xnli_dir):
    dsd = load_xnli(str(xnli_dir), "fr", "validation")
    assert list(dsd) == ["fr"] and dsd["fr"]["label"] == [1]


def test_load_xnli_errors(xnli_dir, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_xnli(xnli_dir, ["de"], "test")
    with pytest.raises(FileNotFoundError):
        load_xnli(tmp_path / "missing", ["en"], "test")
    _write(xnli_dir / "de" / "test.jsonl", [{"premise": "p", "hypothesis": "h", "label": "maybe"}])
    with pytest.raises(ValueError, match="XNLI label"):
        load_xnli(xnli_dir, ["de"], "test")


def test_load_xfever_local(xfever_dir):
    dsd = load_xfever(xfever_dir, ["en", "ja"], "test")
    assert list(dsd) == ["en", "ja"]
    assert dsd["en"].features["label"].names == list(XFEVER_LABEL_NAMES)
    assert dsd["en"]["label"] == [1, 0]  # NOT ENOUGH INFO dropped, SUPPORTS = 1, REFUTES = 0
    assert dsd["en"]["id"] == ["75397", "150448"]
    assert dsd["ja"]["id"] == dsd["en"]["id"]  # parallel across languages
    assert dsd["ja"]["label"] == [1, 0]
    assert dsd["ja"]["evidence"] == ["パリはフランスの首都である。", ""]
    full = load_xfever(xfever_dir, "en", "test", binary=False)
    assert full["en"]["label"] == [1, 0, 2]
    assert load_xfever(xfever_dir, "en", "validation")["en"].num_rows == 1


def test_load_xfever_bad_label(xfever_dir):
    _write(xfever_dir / "es" / "test.jsonl", [{"id": 1, "claim": "c", "evidence": "e", "label": "MAYBE"}])
    with pytest.raises(ValueError, match="XFEVER label"):
        load_xfever(xfever_dir, ["es"], "test")


def test_hub_names_go_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        if path == hub.XNLI_HUB_NAME:
            features = datasets.Features(
                {
                    "premise": datasets.Value("string"),
                    "hypothesis": datasets.Value("string"),
                    "label": datasets.ClassLabel(names=list(XNLI_LABEL_NAMES)),
                }
            )
            return datasets.Dataset.from_dict(
                {"premise": [f"p-{name}"], "hypothesis": [f"h-{name}"], "label": [1]}, features=features
            )
        features = datasets.Features(
            {
                "id": datasets.Value("int64"),
                "claim": datasets.Value("string"),
                "evidence": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["SUPPORTS", "REFUTES", "NOT ENOUGH INFO"]),
            }
        )
        return datasets.Dataset.from_dict(
            {"id": [1, 2, 3], "claim": ["a", "b", "c"], "evidence": ["", "", ""], "label": [0, 1, 2]},
            features=features,
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    xnli = load_xnli(languages=["ar", "zh"], split="validation", cache_dir="/tmp/none")
    assert calls[:2] == [
        ("facebook/xnli", "ar", "validation", {"cache_dir": "/tmp/none"}),
        ("facebook/xnli", "zh", "validation", {"cache_dir": "/tmp/none"}),
    ]
    assert xnli["zh"][0] == {"premise": "p-zh", "hypothesis": "h-zh", "label": 1}
    xfever = load_xfever("someone/xfever", ["fr"], "test")
    assert calls[-1][:3] == ("someone/xfever", "fr", "test")
    # integer labels are decoded through the source's ClassLabel names, then re-encoded REFUTES=0 / SUPPORTS=1
    assert xfever["fr"]["label"] == [1, 0]
    assert xfever["fr"]["id"] == ["1", "2"]
