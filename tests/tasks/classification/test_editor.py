"""MPNEditor: single edits, streams, skipping, locality, resume, fast vs full path, baselines."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from peft import get_peft_model

from conftest import synthetic_texts, translate
from peft_mpn import BaselineConfig, EditConfig, EditRecord, MPNConfig, MPNEditor
from peft_mpn.tasks.classification.editor import EditResult


LANGS = ["en", "fr", "de"]


def predictions(model, tokenizer, texts):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()


def wrong_records(model, tokenizer, n, seed=7):
    """Records whose English text the model gets right, relabelled: the edit must flip them."""
    texts = [t for t, _ in synthetic_texts(200, seed)]
    preds = predictions(model, tokenizer, texts)
    return [
        EditRecord(id=f"r{i}", inputs={lang: translate(t, lang) for lang in LANGS}, label=1 - p)
        for i, (t, p) in enumerate(zip(texts, preds))
    ][:n]


def held_out(n=200, seed=99):
    return [translate(t, lang) for t, _ in synthetic_texts(n // len(LANGS), seed) for lang in LANGS]


def memory_texts(n=600, seed=5):
    return [translate(t, lang) for t, _ in synthetic_texts(n // len(LANGS), seed) for lang in LANGS]


def make_editor(classifier, languages=LANGS, **kwargs):
    model, tokenizer = classifier()
    peft_model = get_peft_model(model, MPNConfig(task_type="SEQ_CLS"))
    kwargs.setdefault("progress", False)
    return MPNEditor(peft_model, tokenizer, languages=languages, memory=memory_texts(), **kwargs), tokenizer


def test_single_edit_flips_the_prediction_and_keeps_the_rest(classifier):
    editor, tokenizer = make_editor(classifier)
    assert editor.fast
    record = wrong_records(editor.model, tokenizer, 1)[0]
    others = held_out()
    before = predictions(editor.model, tokenizer, others)
    result = editor.edit(record)
    assert isinstance(result, EditResult)
    assert result.success and not result.skipped and 0 < result.steps <= editor.config.max_steps
    assert predictions(editor.model, tokenizer, [record.inputs["en"]]) == [record.label]
    assert all(result.correct.values())  # MPN: right in every training language
    assert result.activation_edit > 0
    after = predictions(editor.model, tokenizer, others)
    kept = sum(a == b for a, b in zip(before, after)) / len(others)
    assert kept >= 0.95
    assert editor.model.num_patches() == 1 and editor.model.num_frozen_patches() == 1


def test_stream_of_ten_keeps_earlier_edits_and_skips_correct_ones(classifier):
    editor, tokenizer = make_editor(classifier)
    records = wrong_records(editor.model, tokenizer, 10)
    already_right = EditRecord(id="right", inputs=records[0].inputs, label=1 - records[0].label)
    others = held_out()
    before = predictions(editor.model, tokenizer, others)
    results = editor.edit_stream([already_right, *records])
    assert results[0].skipped and results[0].id == "right"
    edited = [r for r in results[1:] if not r.skipped]  # an earlier edit may already have fixed a later record
    assert len(edited) >= 5 and all(r.success for r in edited)
    final = predictions(editor.model, tokenizer, [r.inputs["en"] for r in records])
    assert final == [r.label for r in records]  # edit retention: earlier edits survive later ones
    after = predictions(editor.model, tokenizer, others)
    assert sum(a == b for a, b in zip(before, after)) / len(others) >= 0.95
    assert editor.model.num_patches() == len(edited)
    assert editor.memory_size == len(memory_texts()) + len(edited) * len(LANGS)


def test_mpn_batches_contain_every_training_language(classifier):
    editor, tokenizer = make_editor(classifier)
    record = wrong_records(editor.model, tokenizer, 1)[0]
    batch = editor.collator.build(record, step=0)
    assert set(batch["languages"]) == set(LANGS)
    assert batch["languages"].count("en") == editor.config.edit_repeat
    assert batch["edit_mask"].sum() == len(batch["languages"])
    assert (batch["labels"][~batch["edit_mask"]] == -100).all()
    tpatcher, _ = make_editor(classifier, languages=["en"])
    assert set(tpatcher.collator.build(record, 0)["languages"]) == {"en"}


def test_fast_and_full_paths_agree(classifier):
    config = EditConfig(max_steps=300)
    fast, tokenizer = make_editor(classifier, config=config, fast=True)
    full, _ = make_editor(classifier, config=config, fast=False)
    assert fast.fast and not full.fast
    record = wrong_records(fast.model, tokenizer, 1)[0]

    # step 0: same patch initialisation, same losses
    fast_losses, full_losses = fast.initial_losses(record), full.initial_losses(record)
    assert fast.model.num_patches() == 0 and full.model.num_patches() == 0  # probes leave no patch
    for name in ("total", "edit", "activation", "memory"):
        assert fast_losses[name] == pytest.approx(full_losses[name], abs=1e-5), name

    fast_result, full_result = fast.edit(record), full.edit(record)
    assert fast_result.success and full_result.success
    assert fast_result.correct == full_result.correct
    assert abs(fast_result.steps - full_result.steps) <= 2


def with_negatives(record, n=3):
    """``record`` plus hard negatives: the English text with its first word changed, so its FFN input is close."""
    words = record.inputs["en"].split()
    variants = [" ".join([f"w{30 + i}", *words[1:]]) for i in range(n)]
    data = record.to_dict()
    data["negatives"] = {lang: [translate(v, lang) for v in variants] for lang in LANGS}
    return EditRecord.from_dict(data)


def test_negatives_are_memory_rows_of_their_edit_on_both_paths(classifier):
    config = EditConfig(max_steps=300)
    fast, tokenizer = make_editor(classifier, config=config, fast=True)
    full, _ = make_editor(classifier, config=config, fast=False)
    record = with_negatives(wrong_records(fast.model, tokenizer, 1)[0])
    plain = EditRecord.from_dict({k: v for k, v in record.to_dict().items() if k != "negatives"})
    fast_losses, full_losses = fast.initial_losses(record), full.initial_losses(record)
    assert fast_losses["memory"] == pytest.approx(full_losses["memory"], abs=1e-5)
    assert fast_losses["memory"] != pytest.approx(fast.initial_losses(plain)["memory"], abs=1e-6)
    # Same memory loss as an editor whose memory simply holds the negatives too: they are memory rows.
    extended = MPNEditor(
        full.model, tokenizer, languages=LANGS, memory=memory_texts() + record.negative_texts(LANGS), progress=False
    )
    assert extended.initial_losses(plain)["memory"] == pytest.approx(fast_losses["memory"], rel=1e-4)
    assert fast.edit(record).success


def test_resume_after_crash_gives_the_same_adapter(classifier, tmp_path, monkeypatch):
    editor, tokenizer = make_editor(classifier)
    records = wrong_records(editor.model, tokenizer, 8)
    reference = editor.edit_stream(records, checkpoint_dir=tmp_path / "ref", checkpoint_every=2)
    # A record an earlier patch already fixed is skipped without an edit (how many depends on the float summation
    # order, so on the thread count): crash at the 4th edit, whichever record that is.
    edited = [i for i, r in enumerate(reference) if not r.skipped]
    assert len(edited) >= 4
    expected = {k: v.clone() for k, v in editor.model.state_dict().items() if "mpn_patches" in k}

    crashing, _ = make_editor(classifier)
    calls = {"n": 0}
    real_edit = MPNEditor.edit

    def edit_then_crash(self, record):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_edit(self, record)

    monkeypatch.setattr(MPNEditor, "edit", edit_then_crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.edit_stream(records, checkpoint_dir=tmp_path / "run", checkpoint_every=2)
    monkeypatch.setattr(MPNEditor, "edit", real_edit)
    state = json.loads((tmp_path / "run" / "current" / "state.json").read_text())
    assert len(state["results"]) == edited[1] + 1  # the checkpoint after edit 2; edit 3 was lost with the crash

    resumed, _ = make_editor(classifier)  # a fresh process: fresh model, no patches
    results = resumed.edit_stream(records, checkpoint_dir=tmp_path / "run", checkpoint_every=2)
    assert [r.to_dict() | {"seconds": 0} for r in results] == [r.to_dict() | {"seconds": 0} for r in reference]
    assert resumed.model.num_patches() == sum(not r.skipped for r in reference)
    got = {k: v for k, v in resumed.model.state_dict().items() if "mpn_patches" in k}
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-6), key

    other = [records[0], *(EditRecord(f"x{i}", r.inputs, r.label) for i, r in enumerate(records[1:]))]
    with pytest.raises(ValueError, match="another stream of records"):
        make_editor(classifier)[0].edit_stream(other, checkpoint_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"other settings \(edit_config.max_steps: 1000 -> 7\)"):
        make_editor(classifier, config=EditConfig(max_steps=7))[0].edit_stream(
            records, checkpoint_dir=tmp_path / "run"
        )
    model, tokenizer = classifier()
    sharper = MPNEditor(get_peft_model(model, MPNConfig(task_type="SEQ_CLS", sharpness=5.0)), tokenizer, LANGS)
    with pytest.raises(ValueError, match=r"sharpness.default: 10.0 -> 5.0"):
        sharper.edit_stream(records, checkpoint_dir=tmp_path / "run")


@pytest.mark.parametrize("method", ["ft", "lora"])
def test_baselines_edit_through_the_same_interface(classifier, method):
    model, tokenizer = classifier()
    baseline = BaselineConfig(lr=1e-2, max_steps=100, norm_constraint=None)  # FT-L/LoRA take their own settings
    editor = MPNEditor(model, tokenizer, languages=["en"], method=method, progress=False, baseline=baseline)
    record = wrong_records(model, tokenizer, 1)[0]
    result = editor.edit(record)
    assert result.success and result.method == method
    assert editor.fast


def test_tpatcher_method_trains_on_english_only(classifier):
    model, tokenizer = classifier()
    editor = MPNEditor(model, tokenizer, languages=LANGS, method="tpatcher", progress=False)
    assert editor.languages == ["en"]
    record = wrong_records(editor.model, tokenizer, 1)[0]
    assert editor.edit(record).success


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"id": "a", "inputs": {"fr": "x"}, "label": 1}, "needs an English"),
        ({"id": "a", "inputs": {"en": "x"}}, "field 'label' is missing"),
        ({"id": "a", "inputs": {"en": "x"}, "label": 1, "colour": "red"}, "field 'colour' is not part"),
        ({"id": "a", "inputs": {"en": ""}, "label": 1}, "empty"),
        ({"id": "a", "inputs": {"english": "x"}, "label": 1}, "not a language code"),
        ({"id": "a", "inputs": {"en": "x"}, "label": -1}, "non-negative int"),
    ],
)
def test_bad_records_get_clear_errors(classifier, data, match):
    editor, _ = make_editor(classifier)
    with pytest.raises(ValueError, match=match):
        editor.edit(data)


def test_label_outside_the_classes_and_a_record_of_another_type(classifier):
    editor, _ = make_editor(classifier)
    record = {"id": "a", "inputs": {lang: "w1" for lang in editor.languages}, "label": 5}
    with pytest.raises(ValueError, match=r"field 'label' = 5 is not a class of the model \(num_labels=2\)"):
        editor.edit(record)
    with pytest.raises(ValueError, match="'label' = 5"):  # the stream checks every record before the first edit
        editor.edit_stream([{**record, "id": "ok", "label": 1}, record])
    assert editor.model.num_patches() == 0
    with pytest.raises(TypeError, match="must be an EditRecord or a dict"):
        editor.edit("w1 w2")


def test_a_model_that_is_not_a_classifier_is_refused():
    from conftest import make_tiny

    with pytest.raises(TypeError, match="is a causal LM: use peft_mpn.CausalLMEditor"):
        MPNEditor(make_tiny("gpt2"), None)
    bare = tf.BertModel(tf.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(TypeError, match="MPNEditor edits sequence classifiers .* got BertModel"):
        MPNEditor(bare, None)


def test_record_missing_a_training_language(classifier):
    editor, _ = make_editor(classifier)
    with pytest.raises(ValueError, match=r"record 'a': field 'inputs' has no text in training languages \['de'\]"):
        editor.edit({"id": "a", "inputs": {"en": "w1", "fr": "w1_fr"}, "label": 1})
