"""Undo one edit of a stream: the fact returns to the base prediction, every other edit still holds."""

from __future__ import annotations

import torch
from peft import PeftModel, get_peft_model

from conftest import synthetic_texts, translate
from peft_mpn import EditRecord, MPNConfig, MPNEditor


LANGS = ["en", "fr", "de"]


def predictions(model, tokenizer, texts):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()


def test_remove_edit_undoes_one_edit_of_a_stream(classifier, tmp_path):
    base, tokenizer = classifier()
    texts = [t for t, _ in synthetic_texts(60, 7)]
    base_preds = predictions(base, tokenizer, texts)
    records = [
        EditRecord(id=f"r{i}", inputs={lang: translate(t, lang) for lang in LANGS}, label=1 - p)
        for i, (t, p) in enumerate(zip(texts, base_preds))
    ][:6]
    memory = [translate(t, lang) for t, _ in synthetic_texts(200, 5) for lang in LANGS]
    model = get_peft_model(classifier()[0], MPNConfig(task_type="SEQ_CLS"))
    editor = MPNEditor(model, tokenizer, languages=LANGS, memory=memory, progress=False)
    results = editor.edit_stream(records, skip_correct=False)
    assert all(r.success for r in results)
    listed = model.edits()
    assert [e["id"] for e in listed] == [r.id for r in records]
    assert all(e["languages"] == LANGS and e["steps"] == r.steps and e["frozen"] for e, r in zip(listed, results))
    assert all(
        e["method"] == "mpn" and e["success"] and e["seconds"] > 0 and e["time"].endswith("+00:00") for e in listed
    )

    english = [r.inputs["en"] for r in records]
    assert predictions(model, tokenizer, english) == [r.label for r in records]
    model.remove_edit("r2")
    after = predictions(model, tokenizer, english)
    assert after[2] == base_preds[2]  # the removed fact: what the base predicts
    assert [a for i, a in enumerate(after) if i != 2] == [r.label for i, r in enumerate(records) if i != 2]

    model.save_pretrained(tmp_path)  # the removal survives a round trip
    again = PeftModel.from_pretrained(classifier()[0], tmp_path)
    assert [e["id"] for e in again.edits()] == ["r0", "r1", "r3", "r4", "r5"]
    assert predictions(again, tokenizer, english) == after
