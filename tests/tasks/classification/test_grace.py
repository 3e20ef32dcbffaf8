"""The GRACE-style peer: a codebook at the patched layer behind the same editor interface (method="grace")."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import synthetic_texts, translate
from peft_mpn import EditRecord, MPNEditor
from peft_mpn.editing.grace import GraceConfig


LANGS = ["en", "fr"]


def predictions(model, tokenizer, texts):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()


def records(model, tokenizer, n, seed=11):
    texts = [t for t, _ in synthetic_texts(80, seed)]
    preds = predictions(model, tokenizer, texts)
    return [
        EditRecord(id=f"g{i}", inputs={lang: translate(t, lang) for lang in LANGS}, label=1 - p)
        for i, (t, p) in enumerate(zip(texts, preds))
    ][:n]


def make(classifier, radius=3.0):
    model, tokenizer = classifier()
    memory = [translate(t, lang) for t, _ in synthetic_texts(60, 5) for lang in LANGS]
    editor = MPNEditor(
        model, tokenizer, LANGS, memory, method="grace", grace=GraceConfig(radius=radius), progress=False
    )
    return editor, tokenizer


def test_grace_edits_hold_and_unrelated_inputs_are_exactly_unchanged(classifier, tmp_path):
    editor, tokenizer = make(classifier)
    assert editor.languages == ["en"]  # one key per (English) edit
    stream = records(editor.model, tokenizer, 8)
    others = [translate(t, "en") for t, _ in synthetic_texts(90, 99)]
    with torch.no_grad():
        before = editor.model(**tokenizer(others, padding=True, return_tensors="pt")).logits
    results = editor.edit_stream(stream, skip_correct=False)
    assert all(r.success for r in results)
    assert predictions(editor.model, tokenizer, [r.inputs["en"] for r in stream]) == [r.label for r in stream]
    codebook = editor.strategy.codebook
    assert len(codebook) == 8 and codebook.ids == [r.id for r in stream]
    with torch.no_grad():
        batch = tokenizer(others, padding=True, return_tensors="pt")
        after = editor.model(**batch).logits
    far = [i for i in range(len(others)) if not torch.equal(after[i], before[i])]
    assert len(far) <= len(others) // 10  # only inputs inside some radius change
    codebook.enabled = False
    with torch.no_grad():
        assert torch.equal(editor.model(**batch).logits, before)  # the base weights are untouched
    codebook.enabled = True

    editor.strategy.save(tmp_path)
    again, _ = make(classifier)
    again.strategy.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(again.model(**batch).logits, after)
    assert again.strategy.remove_edit("g3") == 1 and len(again.strategy.codebook) == 7


def test_grace_initial_losses_leave_the_codebook_unchanged(classifier):
    editor, tokenizer = make(classifier)
    record = records(editor.model, tokenizer, 1)[0]
    editor.initial_losses(record)
    assert len(editor.strategy.codebook) == 0


def test_overlapping_keys_split_their_radii(classifier):
    editor, _ = make(classifier, radius=100.0)  # every key within every other's radius
    codebook = editor.strategy.codebook
    codebook.add(torch.zeros(64), 100.0, "a")
    codebook.freeze()
    codebook.add(torch.full((64,), 0.5), 100.0, "b")
    assert codebook.radii.tolist() == pytest.approx([2.0, 2.0])  # |b - a| = 4: both become 2
    codebook.pop()
    assert codebook.radii.tolist() == [100.0]


@pytest.mark.parametrize("radius", [0, -1.0, math.inf, math.nan, "3"])
def test_bad_radius_is_refused_with_a_clear_error(radius):
    with pytest.raises(ValueError, match="GraceConfig.radius must be a finite distance > 0"):
        GraceConfig(radius=radius)


def test_grace_refuses_a_peft_model(classifier):
    from peft import get_peft_model

    from peft_mpn import MPNConfig

    model, tokenizer = classifier()
    with pytest.raises(TypeError, match="method='grace' hooks the base model"):
        MPNEditor(get_peft_model(model, MPNConfig(task_type="SEQ_CLS")), tokenizer, ["en"], method="grace")
