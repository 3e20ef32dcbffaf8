"""The fast path: FFNSuffix reproduces the full model's logits from cached FFN inputs, and refuses what it can't do."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from peft import get_peft_model

from conftest import VOCAB, make_tiny
from peft_mpn import MPNConfig
from peft_mpn.fastpath import CachedInputs, FastPathUnsupported, FFNSuffix, ffn_function, head_function


CLASSIFIERS = ["bert", "xlm-roberta", "distilbert"]
LAST_BLOCK = {
    "bert": "bert.encoder.layer.1",
    "xlm-roberta": "roberta.encoder.layer.1",
    "distilbert": "distilbert.transformer.layer.1",
}


def patched(model, config=None, seed=0):
    """``model`` with an MPN adapter and one random patch that clearly changes its output."""
    model = get_peft_model(model, config or MPNConfig())
    block, parts = next(iter(model.patch_blocks().items()))
    generator = torch.Generator().manual_seed(seed)
    key = torch.randn(parts["key"].in_features, generator=generator)
    value = torch.randn(parts["value"].out_features, generator=generator)
    model.add_patch(key=key, bias=4.0, value=value)  # fires on most tokens, [CLS] included
    return model, block, parts["key"]


def padded_batch(model):
    """Three sequences of lengths 7, 4 and 2, padded with the model's pad token."""
    pad = model.config.pad_token_id
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, length in ((1, 4), (2, 2)):
        ids[row, length:] = pad
        mask[row, length:] = 0
    return ids, mask


@pytest.mark.parametrize("arch", CLASSIFIERS)
def test_suffix_logits_equal_the_full_model(arch):
    model, block, key = patched(make_tiny(arch))
    assert block == LAST_BLOCK[arch]
    suffix = FFNSuffix(model, block, key)
    ids, mask = padded_batch(model)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():
            unpatched = model(input_ids=ids, attention_mask=mask).logits
        cached = suffix.encode(ids, mask)
        fast = suffix.logits(cached)
    assert not torch.allclose(full, unpatched, atol=1e-3)  # the patch matters, so the comparison means something
    assert fast.shape == full.shape
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    assert cached.hidden.shape == (3, 7, 32) and torch.equal(cached.mask, mask)
    # chunked encoding gives the same cache; a cached sub-batch gives the full model's rows
    torch.testing.assert_close(suffix.encode(ids, mask, batch_size=2).hidden, cached.hidden, atol=1e-6, rtol=0)
    torch.testing.assert_close(suffix.logits(cached.select([2, 0])), full[[2, 0]], atol=1e-5, rtol=0)


def test_suffix_follows_patch_changes_without_re_encoding():
    """The cache holds the FFN *input*, so a trained (changed) patch is seen by the next suffix call."""
    model, block, key = patched(make_tiny("bert"))
    suffix = FFNSuffix(model, block, key)
    ids, mask = padded_batch(model)
    cached = suffix.encode(ids, mask)
    with torch.no_grad():
        next(iter(model.patch_blocks().values()))["value"].bank("default").weights[-1].mul_(-3.0)
        full = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(suffix.logits(cached), full, atol=1e-5, rtol=0)


def test_one_layer_model_has_a_fast_path():
    torch.manual_seed(0)
    base = tf.BertForSequenceClassification(
        tf.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).eval()
    model, block, key = patched(base)
    assert block == "bert.encoder.layer.0"  # layer 0 is also the last one
    ids, mask = padded_batch(model)
    suffix = FFNSuffix(model, block, key)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(suffix.logits(suffix.encode(ids, mask)), full, atol=1e-5, rtol=0)


def test_suffix_on_an_unwrapped_model():
    model = make_tiny("bert")
    block = "bert.encoder.layer.1"
    suffix = FFNSuffix(model, block, model.get_submodule(block + ".intermediate.dense"))
    ids, mask = padded_batch(model)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(suffix.logits(suffix.encode(ids, mask)), full, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- CachedInputs
def test_cached_inputs_select_and_read():
    hidden = torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(3, 4, 2)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    cached = CachedInputs(hidden, mask)
    assert len(cached) == 3
    picked = cached.select([2, 0])
    assert torch.equal(picked.hidden, hidden[[2, 0]]) and torch.equal(picked.mask, mask[[2, 0]])
    assert torch.equal(cached.select(torch.tensor([1])).hidden, hidden[1:2])
    assert torch.equal(cached.read("cls"), hidden[:, 0])
    tokens = cached.read("all")
    assert tokens.shape == (4 + 2 + 1, 2)
    assert torch.equal(tokens, torch.cat([hidden[0], hidden[1, :2], hidden[2, :1]]))
    assert torch.equal(picked.read("all"), torch.cat([hidden[2, :1], hidden[0]]))


# ---------------------------------------------------------------------- unsupported
def test_patch_not_in_the_last_layer_is_unsupported():
    model, block, key = patched(make_tiny("bert"), MPNConfig(layers_to_transform=[0]))
    assert block == "bert.encoder.layer.0"
    with pytest.raises(FastPathUnsupported, match=r"last layer.*fast=False"):
        FFNSuffix(model, block, key)
    assert issubclass(FastPathUnsupported, ValueError)


def test_gpt2_classifier_is_unsupported():
    torch.manual_seed(0)
    model = tf.GPT2ForSequenceClassification(
        tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, pad_token_id=0)
    ).eval()
    with pytest.raises(FastPathUnsupported, match="GPT2ForSequenceClassification"):
        head_function(model)
    model, block, key = patched(model)
    assert block == "transformer.h.1"
    with pytest.raises(FastPathUnsupported, match="fast=False"):
        FFNSuffix(model, block, key)


def test_llama_is_unsupported():
    model, block, key = patched(make_tiny("llama"))
    assert block == "model.layers.1"
    with pytest.raises(FastPathUnsupported, match="fast=False"):
        FFNSuffix(model, block, key)
    base = model.get_base_model()
    with pytest.raises(FastPathUnsupported, match="LlamaDecoderLayer"):
        ffn_function(base.model.layers[1])
    with pytest.raises(FastPathUnsupported, match="LlamaForCausalLM"):
        head_function(base)


def test_classify_hidden_models_use_their_own_head():
    class WithHead(torch.nn.Module):
        def classify_hidden(self, seq, mask):
            return seq.sum(1)

    head = head_function(WithHead())
    assert torch.equal(head(torch.ones(2, 3, 4), torch.ones(2, 3)), torch.full((2, 4), 3.0))
