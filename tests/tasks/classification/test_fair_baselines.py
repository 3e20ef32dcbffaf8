"""FT-L and LoRA as the literature runs them: norm bound, step cap, the stop rule, replay, and determinism."""

from __future__ import annotations

import pytest
import torch

from conftest import synthetic_texts, translate
from peft_mpn import EditRecord, MPNEditor
from peft_mpn.editing.baselines import BaselineConfig


LANGS = ["en", "fr"]


def records(model, tokenizer, n):
    texts = [t for t, _ in synthetic_texts(80, 11)]
    with torch.no_grad():
        preds = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    return [
        EditRecord(id=f"b{i}", inputs={lang: translate(t, lang) for lang in LANGS}, label=1 - p)
        for i, (t, p) in enumerate(zip(texts, preds))
    ][:n]


def memory():
    return [translate(t, lang) for t, _ in synthetic_texts(100, 5) for lang in LANGS]


def run(classifier, method, baseline):
    model, tokenizer = classifier()
    editor = MPNEditor(model, tokenizer, LANGS, memory(), method=method, baseline=baseline, progress=False)
    results = editor.edit_stream(records(model, tokenizer, 5), skip_correct=False)
    state = {k: v.detach().clone() for k, v in editor.model.state_dict().items()}
    return editor, results, state


def test_ftl_stays_within_the_norm_bound_and_stops_when_right(classifier):
    base, _ = classifier()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    baseline = BaselineConfig(lr=1e-2, max_steps=30, norm_constraint=1e-3)
    editor, results, state = run(classifier, "ft", baseline)
    moved = max(float((state[k] - before[k]).abs().max()) for k in before)
    assert 0 < moved <= 5 * 1e-3 + 1e-6  # 5 edits, each within 1e-3 of where it started
    for result in results:
        assert result.steps <= 30
        if result.success:
            assert result.steps < 30  # stopped by the stop rule, as soon as it was right
    changed = [k for k in before if not torch.equal(state[k], before[k])]
    assert changed and all("layer.1.intermediate.dense" in k or "layer.1.output.dense" in k for k in changed)


@pytest.mark.parametrize("method", ["ft", "lora"])
def test_baselines_are_deterministic(classifier, method):
    baseline = BaselineConfig(lr=5e-3, max_steps=15, replay=16)
    _, first, state1 = run(classifier, method, baseline)
    _, second, state2 = run(classifier, method, baseline)
    assert [(r.steps, r.success, r.losses) for r in first] == [(r.steps, r.success, r.losses) for r in second]
    assert state1.keys() == state2.keys() and all(torch.equal(state1[k], state2[k]) for k in state1)
    assert any(r.losses["memory"] > 0 for r in first)  # the replay loss ran


def test_replay_keeps_memory_predictions_closer(classifier):
    kept = {}
    for replay in (0, 64):
        editor, _, _ = run(
            classifier, "ft", BaselineConfig(lr=3e-2, max_steps=40, norm_constraint=None, replay=replay)
        )
        base, tokenizer = classifier()
        texts = memory()
        with torch.no_grad():
            a = base(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
        b = torch.tensor(editor.predict(texts))
        kept[replay] = float((a.argmax(-1) == b).float().mean())
    assert kept[64] >= kept[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0}, "BaselineConfig.lr must be a finite number > 0"),
        ({"norm_constraint": -1.0}, "BaselineConfig.norm_constraint must be > 0 or None"),
        ({"max_steps": 0}, "BaselineConfig.max_steps must be an int >= 1"),
        ({"replay": True}, "BaselineConfig.replay must be an int >= 0"),
        ({"replay_weight": float("nan")}, "BaselineConfig.replay_weight must be a finite number >= 0"),
    ],
)
def test_baseline_config_names_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BaselineConfig(**kwargs)
