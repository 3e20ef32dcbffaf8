"""FT-L and LoRA on causal LMs: the same `CausalLMEditor` loop, stop rule and fast path as the patches."""

from __future__ import annotations

import pytest
import torch

from conftest import lm_edit_records, lm_sentences, lm_translate, lm_word_tokenizer, make_tiny_lm
from peft_mpn import CausalLMEditor
from peft_mpn.editing.baselines import BaselineConfig
from peft_mpn.editing.fastpath import FastPathUnsupported
from peft_mpn.tasks.generation.fastpath import LMSuffix


#: The tiny random models need a larger step than the pretrained ones the defaults were chosen on.
TINY = {"lr": 1e-2, "max_steps": 50, "norm_constraint": 5e-2}


def make(arch: str, method: str, fast: bool | None = None, **baseline) -> CausalLMEditor:
    tokenizer = lm_word_tokenizer(bos=arch in ("llama", "gemma3_text"))
    memory = [lm_translate(s, lang) for s in lm_sentences(60, seed=11) for lang in ("en", "fr")]
    config = BaselineConfig.for_method(method, **{**TINY, **baseline})
    model = make_tiny_lm(arch, len(tokenizer))
    return CausalLMEditor(
        model, tokenizer, ["en", "fr"], memory, method=method, baseline=config, fast=fast, progress=False
    )


@pytest.mark.parametrize("method", ["ft", "lora"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_baseline_edits_through_the_fast_path_like_the_full_model(arch, method):
    record = lm_edit_records(1, seed=3)[0]
    fast, full = make(arch, method), make(arch, method, fast=False)
    assert fast.fast and not full.fast and fast.uses_patch is False
    assert fast.initial_losses(record) == pytest.approx(full.initial_losses(record), rel=1e-4)
    results = fast.edit(record), full.edit(record)
    assert results[0].success and results[1].success, results
    assert results[0].correct == {"en": True, "fr": True} and results[0].neurons == 0
    assert 1 <= results[0].steps < TINY["max_steps"]  # the stop rule: done once every training language is right
    assert abs(results[0].steps - results[1].steps) <= 1
    assert not hasattr(fast.model, "num_patches") or fast.model.num_patches() == 0


@pytest.mark.parametrize("method", ["ft", "lora"])
def test_baseline_stream_is_deterministic(method):
    records = lm_edit_records(3, seed=4)
    runs = []
    for _ in range(2):
        editor = make("llama", method)
        results = editor.edit_stream(records)
        runs.append(
            ([(r.success, r.steps, r.losses) for r in results], editor.generate([records[0]["prompt"]["fr"]], 3))
        )
    assert runs[0] == runs[1]
    assert all(success for success, _, _ in runs[0][0])


def test_ft_unedited_is_the_original_model_and_restores_the_edit():
    editor = make("llama", "ft")
    records = lm_edit_records(2, seed=5)
    prompts = [r["prompt"]["en"] for r in records]
    before = editor.generate(prompts, 2)
    editor.edit_stream(records)
    after = editor.generate(prompts, 2)
    assert after != before and after == [r["target"]["en"].strip() for r in records]
    assert editor.generate(prompts, 2, base=True) == before  # the reference of locality: the unedited weights
    assert editor.generate(prompts, 2) == after  # ... swapped back after the block
    assert editor.locality(prompts, max_new_tokens=2)["exact"] == 0.0  # every first token moved


def test_replay_keeps_memory_predictions_with_a_kl_term():
    records = lm_edit_records(2, seed=6)
    plain = make("gemma3_text", "ft", replay=0, lr=3e-3, norm_constraint=None)
    replay = make("gemma3_text", "ft", replay=64, replay_weight=10.0, lr=3e-3, norm_constraint=None)
    results = {name: e.edit_stream(records) for name, e in (("plain", plain), ("replay", replay))}
    assert all(r.losses["memory"] == 0 for r in results["plain"])
    assert all(r.losses["memory"] > 0 for r in results["replay"])  # the KL to the memory's distributions moved
    assert all(r.success for r in results["replay"])


def test_bloom_mlp_takes_the_residual_so_baselines_use_the_full_model():
    editor = make("bloom", "ft")
    assert not editor.fast
    with pytest.raises(FastPathUnsupported, match="forward takes 2 inputs"):
        LMSuffix(editor.model, {"key": editor.strategy.key_module}, whole_mlp=True)
    assert editor.edit(lm_edit_records(1, seed=7)[0]).steps >= 1


def test_unknown_method_names_the_choices():
    tokenizer = lm_word_tokenizer()
    with pytest.raises(ValueError, match="'mpn', 'tpatcher', 'ft', 'lora'"):
        CausalLMEditor(make_tiny_lm("llama", len(tokenizer)), tokenizer, method="rome", progress=False)


def test_mlp_logits_needs_a_whole_mlp_suffix():
    editor = make("llama", "ft")
    suffix = LMSuffix(editor.model, {"key": editor.strategy.key_module})
    with pytest.raises(ValueError, match="whole_mlp=True"):
        suffix.mlp_logits(torch.zeros(1, 64), torch.zeros(1, 64))
