"""Decoder architectures for generation edits: GPT-2 (Conv1D), LLaMA, Qwen2, Mistral (gated MLP), BLOOM.

For each: the preset finds the FFN, the fast path gives the full model's losses, an edit works, and merging the
edited adapter is exact (in memory, and into a plain model).
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from conftest import LM_ARCHS, lm_edit_records, lm_sentences, lm_translate, lm_word_tokenizer, make_tiny, make_tiny_lm
from peft_mpn import FFN_PRESETS, CausalLMEditor, EditConfig, LMLayerSuffix, LMSuffix, MPNConfig, MPNLayer
from peft_mpn.editing.fastpath import FastPathUnsupported
from peft_mpn.tasks.generation.collator import pad_right


ROLES = {
    "gpt2": {"key": "mlp.c_fc", "value": "mlp.c_proj"},
    "llama": {"key": "mlp.gate_proj", "up": "mlp.up_proj", "value": "mlp.down_proj"},
    "qwen2": {"key": "mlp.gate_proj", "up": "mlp.up_proj", "value": "mlp.down_proj"},
    "mistral": {"key": "mlp.gate_proj", "up": "mlp.up_proj", "value": "mlp.down_proj"},
    "bloom": {"key": "mlp.dense_h_to_4h", "value": "mlp.dense_4h_to_h"},
    "gemma": {"key": "mlp.gate_proj", "up": "mlp.up_proj", "value": "mlp.down_proj"},
    "gemma2": {"key": "mlp.gate_proj", "up": "mlp.up_proj", "value": "mlp.down_proj"},
    "gemma3_text": {"key": "mlp.gate_proj", "up": "mlp.up_proj", "value": "mlp.down_proj"},
    "olmo2": {"key": "mlp.gate_proj", "up": "mlp.up_proj", "value": "mlp.down_proj"},
}


def editor_for(arch: str, **kwargs) -> CausalLMEditor:
    tokenizer = lm_word_tokenizer(bos=arch in ("llama", "mistral", "gemma", "gemma2", "gemma3_text"))
    memory = [lm_translate(s, lang) for s in lm_sentences(60, seed=11) for lang in ("en", "fr")]
    return CausalLMEditor(
        make_tiny_lm(arch, len(tokenizer)),
        tokenizer,
        ["en", "fr"],
        memory,
        config=EditConfig(lr=3e-2),
        progress=False,
        **kwargs,
    )


def test_bloom_preset_is_listed_and_wraps_the_mlp():
    assert FFN_PRESETS["bloom"].key_modules == ("mlp.dense_h_to_4h",)
    model = get_peft_model(make_tiny("bloom"), MPNConfig())
    wrapped = {m.role: n for n, m in model.named_modules() if isinstance(m, MPNLayer)}
    assert wrapped == {
        "key": "base_model.model.transformer.h.1.mlp.dense_h_to_4h",
        "value": "base_model.model.transformer.h.1.mlp.dense_4h_to_h",
    }


@pytest.mark.parametrize("arch", LM_ARCHS)
def test_fast_path_losses_equal_full_model_losses(arch):
    record = lm_edit_records(1, seed=12)[0]
    fast, full = editor_for(arch), editor_for(arch, fast=False)
    roles = {m.role: n for n, m in fast.model.named_modules() if isinstance(m, MPNLayer)}
    assert {role: name.split(".")[-2] + "." + name.split(".")[-1] for role, name in roles.items()} == ROLES[arch]
    assert fast.fast and not full.fast
    assert fast.initial_losses(record) == pytest.approx(full.initial_losses(record), rel=1e-4, abs=1e-5)
    assert fast.fast  # the first edit's check against the full model passed
    assert fast.model.num_patches() == 0  # initial_losses leaves the model as it was


@pytest.mark.parametrize("arch", LM_ARCHS)
def test_edit_then_merge_is_exact(arch):
    editor = editor_for(arch)
    record = lm_edit_records(1, seed=13)[0]
    result = editor.edit(record)
    assert result.success and result.generated["fr"]
    assert editor.fast and editor.model.num_patches() == 1
    model = editor.model
    ids = torch.tensor([editor.collator.text_ids(p) for p in lm_sentences(4, seed=14, low=6, high=6)])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        model.merge_adapter()
        assert (model(input_ids=ids).logits - expected).abs().max() <= 1e-5
        assert editor.generate([record["prompt"]["en"]], 2) == [record["target"]["en"].strip()]
        model.unmerge_adapter()
        assert torch.equal(model(input_ids=ids).logits, expected)
        merged = model.merge_and_unload(uniform_width=False)
        assert not any(isinstance(m, MPNLayer) for m in merged.modules())
        assert (merged(input_ids=ids).logits - expected).abs().max() <= 1e-5


def test_merged_gpt2_and_llama_reload_as_plain_checkpoints_bloom_says_why_not(tmp_path):
    for arch in ("gpt2", "llama"):
        editor = editor_for(arch)
        assert editor.edit(lm_edit_records(1, seed=15)[0]).success
        ids = torch.tensor([editor.collator.text_ids("v1 v2 v3 v4")])
        with torch.no_grad():
            expected = editor.model(input_ids=ids).logits
        editor.model.merge_and_unload().save_pretrained(tmp_path / arch)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / arch).eval()
        with torch.no_grad():
            assert (reloaded(input_ids=ids).logits - expected).abs().max() <= 1e-5
    bloom = get_peft_model(make_tiny("bloom"), MPNConfig())
    bloom.add_patch()
    with pytest.raises(ValueError, match="uniform_width=False"):
        bloom.merge_and_unload()


@pytest.mark.parametrize("arch", ["mistral", "bloom", "gemma3_text"])  # LLaMA, GPT-2, Qwen2: test_generation_editor
def test_adapter_save_load_round_trip(arch, tmp_path):
    editor = editor_for(arch)
    record = lm_edit_records(1, seed=16)[0]
    assert editor.edit(record).success
    editor.model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(make_tiny_lm(arch, len(editor.tokenizer)), tmp_path)
    ids = torch.tensor([editor.collator.encode_record(editor._record(record), "fr").ids])
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, editor.model(input_ids=ids).logits, atol=1e-6)


def test_suffix_needs_the_last_layer_and_the_layer_suffix_one_above_the_first():
    tokenizer = lm_word_tokenizer()
    model = get_peft_model(make_tiny_lm("llama", len(tokenizer)), MPNConfig(layers_to_transform=[0]))
    parts = next(iter(model.patch_blocks().values()))
    with pytest.raises(FastPathUnsupported, match="last layer"):
        LMSuffix(model, parts)
    with pytest.raises(FastPathUnsupported, match="above the first layer"):
        LMLayerSuffix(model, parts)
    editor = CausalLMEditor(model, tokenizer, progress=False)  # fast=None: the full model instead
    assert not editor.fast
    with pytest.raises(FastPathUnsupported, match="fast=False"):
        CausalLMEditor(model, tokenizer, fast=True)


def layer_editor_for(arch: str, **kwargs) -> CausalLMEditor:
    """An editor of a 3-layer tiny LM patched in its middle layer (Gemma 2 and 3: sliding-window attention there)."""
    tokenizer = lm_word_tokenizer(bos=arch in ("llama", "mistral", "gemma", "gemma2", "gemma3_text"))
    memory = [lm_translate(s, lang) for s in lm_sentences(60, seed=11) for lang in ("en", "fr")]
    model = get_peft_model(make_tiny_lm(arch, len(tokenizer), layers=3), MPNConfig(layers_to_transform=[1]))
    return CausalLMEditor(model, tokenizer, ["en", "fr"], memory, config=EditConfig(lr=3e-2), progress=False, **kwargs)


@pytest.mark.parametrize("arch", LM_ARCHS)
def test_layer_fast_path_equals_the_full_model_and_edits(arch):
    record = lm_edit_records(1, seed=12)[0]
    fast, full = layer_editor_for(arch), layer_editor_for(arch, fast=False)
    assert isinstance(fast.suffix, LMLayerSuffix) and not full.fast
    assert fast.initial_losses(record) == pytest.approx(full.initial_losses(record), rel=1e-4, abs=1e-5)
    assert fast.fast and fast.model.num_patches() == 0  # the check against the full model passed
    result = fast.edit(record)
    assert result.success and result.generated["fr"]
    assert fast.fast and fast.model.num_patches() == 1


def test_layer_fast_path_logits_match_the_full_model_with_sliding_windows_and_padding():
    editor = layer_editor_for("gemma3_text")
    assert editor.model.config.layer_types[:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    editor.model.add_patch(2, key=torch.randn(2, 64), bias=0.5, value=torch.randn(2, 64))
    sequences = [editor.collator.text_ids(s) for s in lm_sentences(3, seed=5, low=4, high=9)]
    states = editor.suffix.capture(sequences, editor.pad_id)
    positions = [list(range(len(s))) for s in sequences]
    logits, pre = editor.suffix.run(states, [2, 0], [positions[2], positions[0]])
    ids, mask = pad_right(sequences, editor.pad_id)
    with torch.no_grad(), editor.model.capture_activations() as captured:
        full = editor.model(input_ids=ids, attention_mask=mask).logits
    full_pre = next(iter(captured.values()))[..., -2:]
    for got, got_pre, row in zip(logits, pre, [2, 0]):
        n = len(sequences[row])
        assert torch.allclose(got, full[row, :n], atol=1e-5) and torch.allclose(got_pre, full_pre[row, :n], atol=1e-5)
    assert max(map(len, sequences)) > 3  # longer than the sliding window
    assert [type(layer).__name__ for layer in editor.suffix.layers] == ["Gemma3DecoderLayer"] * 3  # put back


def test_gemma3_preset_disable_is_exact_and_a_standard_merge_says_why_not():
    tokenizer = lm_word_tokenizer()
    model = get_peft_model(make_tiny_lm("gemma3_text", len(tokenizer)), MPNConfig())
    wrapped = {
        m.role: n.removeprefix("base_model.model.model.") for n, m in model.named_modules() if isinstance(m, MPNLayer)
    }
    assert wrapped == {
        "key": "layers.1.mlp.gate_proj",
        "up": "layers.1.mlp.up_proj",
        "value": "layers.1.mlp.down_proj",
    }
    ids = torch.tensor([[2, 5, 9, 14, 30]])
    with torch.no_grad():
        base = model.get_base_model()(input_ids=ids).logits.clone()
        model.add_patch(2, key=torch.randn(2, 64), bias=0.5, value=torch.randn(2, 64))
        assert (model(input_ids=ids).logits - base).abs().max() > 1e-3
        with model.disable_adapter():
            assert torch.equal(model(input_ids=ids).logits, base)
    with pytest.raises(ValueError, match="gemma3_text MLPs have no bias.*uniform_width=False"):
        model.merge_and_unload()


@pytest.mark.parametrize("arch", ["gemma3_text", "llama"])
def test_a_bfloat16_model_keeps_the_fast_path(arch):
    """bf16 logits come in coarse steps: the check's tolerance follows the dtype, so the fast path is not dropped."""
    tokenizer = lm_word_tokenizer()
    memory = [lm_translate(s, "fr") for s in lm_sentences(20, seed=11)]
    model = make_tiny_lm(arch, len(tokenizer)).to(torch.bfloat16)
    editor = CausalLMEditor(model, tokenizer, ["en", "fr"], memory, fast=True, progress=False)
    editor.initial_losses(lm_edit_records(1, seed=12)[0])  # raises FastPathUnsupported if the check fails
    assert editor.fast


def test_post_norm_suffix_needs_the_mlp_outputs():
    editor = editor_for("gemma3_text")
    suffix = editor.suffix
    assert suffix.post_norm is not None and suffix.softcap is None
    assert editor_for("gemma2").suffix.softcap == 30.0 and editor_for("llama").suffix.post_norm is None
    record = editor._record(lm_edit_records(1, seed=12)[0])
    states = suffix.capture([editor.collator.encode_record(record, "en").ids], editor.pad_id)
    assert states.m is not None and states.z.dtype == torch.float32
    editor.model.add_patch(1, key=torch.randn(1, 64), bias=0.0, value=torch.randn(1, 64))
    with pytest.raises(ValueError, match="pass CachedStates.m"):
        suffix.logits(states.x[0], states.z[0])
    logits, pre = suffix.logits(states.x[0], states.z[0], states.m[0])
    assert logits.shape[0] == pre.shape[0] == states.x.shape[1]
