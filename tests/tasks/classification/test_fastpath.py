"""The fast path: FFNSuffix reproduces the full model's logits from cached FFN inputs, and refuses what it can't do."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from peft import get_peft_model

from conftest import VOCAB, make_tiny, synthetic_texts, translate
from peft_mpn import EditRecord, MPNConfig, MPNEditor
from peft_mpn.editing.fastpath import CachedInputs, FastPathUnsupported, MemoryCache
from peft_mpn.editing.optim import build_optimizer, clip_grad_norm, edit_optimizer
from peft_mpn.editing.trainer import ReusedBatches
from peft_mpn.tasks.classification.fastpath import FFNSuffix, ffn_function, head_function


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


# ---------------------------------------------------------------------- one patch on a constant FFN output
@pytest.mark.parametrize("arch", CLASSIFIERS)
@pytest.mark.parametrize("sharpness", [1.0, 10.0])
def test_patch_logits_equal_the_full_ffn_with_gradients(arch, sharpness):
    """The split step (FFN output without the new patch + the new unit) is the FFN block, values and gradients."""
    model = get_peft_model(make_tiny(arch), MPNConfig(sharpness=sharpness))
    block, parts = next(iter(model.patch_blocks().items()))
    generator = torch.Generator().manual_seed(3)
    model.add_patch(key=torch.randn(32, generator=generator), bias=1.0, value=torch.randn(32, generator=generator))
    model.freeze_patches()  # an earlier patch, inside the constant part
    suffix = FFNSuffix(model, block, parts["key"])
    assert suffix.can_split
    ids, mask = padded_batch(model)
    cached = suffix.encode(ids, mask)
    base_output = suffix.value_output(cached)
    model.add_patch(key=torch.randn(32, generator=generator) / 4, bias=0.5, value=torch.randn(32, generator=generator))
    key_bank, value_bank = parts["key"].bank("default"), parts["value"].bank("default")
    key, bias, value = key_bank.weights[-1], key_bank.biases[-1], value_bank.weights[-1]

    full = suffix.logits(cached)
    loss_full = (full**2).sum()
    grads_full = torch.autograd.grad(loss_full, [key, bias, value])
    split, pre = suffix.patch_logits(cached, base_output, key, bias, value, sharpness)
    grads_split = torch.autograd.grad((split**2).sum(), [key, bias, value])
    torch.testing.assert_close(split, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pre, cached.hidden @ key.T + bias, atol=1e-6, rtol=0)
    for a, b in zip(grads_split, grads_full):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_suffix_without_mpn_patches_cannot_split():
    model = make_tiny("bert")
    block = "bert.encoder.layer.1"
    suffix = FFNSuffix(model, block, model.get_submodule(block + ".intermediate.dense"))
    assert not suffix.can_split
    cached = suffix.encode(*padded_batch(model))
    with pytest.raises(FastPathUnsupported, match="can_split"):
        suffix.value_output(cached)


def test_cached_inputs_trim_drops_columns_padded_everywhere():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    cached = CachedInputs(torch.randn(2, 4, 3), mask)
    trimmed = cached.trim()
    assert trimmed.hidden.shape == (2, 2, 3) and torch.equal(trimmed.mask, mask[:, :2])
    assert trimmed.trim() is trimmed


# ---------------------------------------------------------------------- MemoryCache
def memory_rows(n, width=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=generator) + 2.0  # a common offset, like real read vectors


@pytest.mark.parametrize("phase", ["few", "common", "half", "dense"])
def test_memory_acts_and_their_gradient_match_plain_autograd(phase):
    """The backward pass that touches few rows gives the gradient of the plain product, in each of its cases."""
    reads = memory_rows(1000)
    cache = MemoryCache()
    cache.append(reads[:300], torch.arange(300), 300)
    cache.append(reads[300:], torch.arange(700), 700)
    assert len(cache) == 1000 and cache.texts == 1000 and torch.equal(cache.reads, reads)
    assert torch.equal(cache.owners, torch.arange(1000))
    key = torch.nn.Parameter(torch.randn(1, 16, generator=torch.Generator().manual_seed(1)) / 4)
    bias = torch.nn.Parameter(torch.tensor([0.3]))
    acts = cache.acts(key, bias)
    expected = reads @ key.T + bias
    torch.testing.assert_close(acts, expected, atol=1e-5, rtol=0)
    weights = torch.zeros(1000, 1)
    if phase == "few":
        weights[[3, 500, 999]] = torch.tensor([[1.0], [2.0], [-1.0]])
    elif phase == "common":
        weights += 0.01
        weights[[7, 8]] += 1.0
    elif phase == "half":  # many rows share a value, but too many are zero for the common-value shortcut
        weights[:500] += 0.01
        weights[3] += 1.0
    else:
        weights = torch.randn(1000, 1, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad((acts * weights).sum(), [key, bias])
    want = torch.autograd.grad((expected * weights).sum(), [key, bias])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_memory_cache_bits_do_not_depend_on_how_rows_arrived():
    """A resumed stream caches its memory in one go; the products must be bit for bit those of one-by-one."""
    reads = memory_rows(1500, seed=4)
    one_by_one, at_once = MemoryCache(), MemoryCache()
    for start in range(0, 1500, 7):
        one_by_one.append(reads[start : start + 7], torch.arange(len(reads[start : start + 7])), 1)
    at_once.append(reads, torch.arange(1500), 1500)
    key = torch.nn.Parameter(torch.randn(1, 16, generator=torch.Generator().manual_seed(5)))
    bias = torch.nn.Parameter(torch.tensor([-1.0]))
    grad = torch.randn(1500, 1, generator=torch.Generator().manual_seed(6))
    results = []
    for cache in (one_by_one, at_once):
        acts = cache.acts(key, bias)
        results.append((acts.detach(), *torch.autograd.grad((acts * grad).sum(), [key, bias])))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_memory_cache_sampled_texts_and_empty():
    cache = MemoryCache()
    key, bias = torch.ones(1, 16), torch.zeros(1)
    assert cache.acts(key, bias).shape == (0, 1) and cache.reads is None
    reads = memory_rows(10)
    cache.append(reads, torch.arange(10), 10)
    torch.testing.assert_close(cache.acts(key, bias, texts=[2, 5]), reads[[2, 5]] @ key.T, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- optimizer and clipping
def test_lean_adamw_and_clipping_follow_torch_bit_for_bit():
    def train(lean):
        generator = torch.Generator().manual_seed(1)
        key = torch.nn.Parameter(torch.randn(1, 16, generator=generator))
        bias = torch.nn.Parameter(torch.randn(1, generator=generator))
        value = torch.nn.Parameter(torch.randn(1, 8, generator=generator))
        optimizer = (edit_optimizer if lean else build_optimizer)([key, bias], 1e-2, 0.01, [value], 10.0)
        x = torch.randn(5, 16, generator=generator)
        for _ in range(30):
            optimizer.zero_grad()
            ((x @ key.T + bias).exp().sum() + 10 * (value**3).sum()).backward()
            if lean:
                clip_grad_norm([key, bias, value], 5.0)
            else:
                torch.nn.utils.clip_grad_norm_([key, bias, value], 5.0, foreach=True)
            optimizer.step()
        return type(optimizer).__name__, key, bias, value

    reference, lean = train(False), train(True)
    assert reference[0] == "AdamW" and lean[0] in ("LeanAdamW", "AdamW")
    for a, b in zip(reference[1:], lean[1:]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- the editor's fast step
def test_split_step_edits_like_the_full_suffix(classifier):
    """An edit through the split step and one through the whole FFN block take the same steps to the same patch."""
    outcomes = []
    for split in (True, False):
        model, tokenizer = classifier()
        memory = [translate(t, "en") for t, _ in synthetic_texts(300, 5)]
        editor = MPNEditor(
            get_peft_model(model, MPNConfig(task_type="SEQ_CLS")), tokenizer, memory=memory, progress=False
        )
        if not split:
            editor.suffix.parts = None  # forces the generic step: the FFN block and head on the cached inputs
        text = translate(synthetic_texts(1, 7)[0][0], "en")
        with torch.no_grad():
            label = 1 - int(editor.model(**tokenizer([text], return_tensors="pt")).logits.argmax(-1))
        result = editor.edit(EditRecord(id="r", inputs={"en": text}, label=label))
        bank = next(iter(editor.model.patch_blocks().values()))["key"].bank("default")
        outcomes.append((result.success, result.steps, bank.frozen_weight.clone()))
    assert outcomes[0][0] and outcomes[0][:2] == outcomes[1][:2]
    torch.testing.assert_close(outcomes[0][2], outcomes[1][2], atol=1e-4, rtol=1e-4)


def test_memory_texts_are_encoded_by_length_and_kept_in_order(classifier):
    model, tokenizer = classifier()
    texts = [translate(t, "en") for t, _ in synthetic_texts(40, 3)] + ["w1", "w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"]
    editor = MPNEditor(get_peft_model(model, MPNConfig(task_type="SEQ_CLS")), tokenizer, memory=texts, progress=False)
    assert editor.cache_memory() == len(texts)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    expected = editor.suffix.encode(batch["input_ids"], batch["attention_mask"]).read("cls")
    torch.testing.assert_close(editor._memory.reads, expected, atol=1e-5, rtol=0)
    assert editor.cache_memory() == len(texts)  # nothing new to cache


def test_reused_batches_rebuild_only_when_the_batch_changes():
    calls = []

    class Collator:
        memory = ["a", "b"]
        memory_batch_size = None

        def step_languages(self, step):
            return ["en"] * 2

        def memory_indices(self, step):
            return [0, 1]

        def __call__(self, features):
            calls.append(features[0]["step"])
            return {"step": features[0]["step"]}

    collator = Collator()
    batches = ReusedBatches(collator)
    record = EditRecord(id="x", inputs={"en": "t"}, label=1)
    first = batches([{"record": record, "step": 0}])
    assert batches([{"record": record, "step": 1}]) is first and calls == [0]
    collator.memory.append("c")  # a changed memory is a new batch
    assert batches([{"record": record, "step": 2}]) is not first and calls == [0, 2]
    other = EditRecord(id="y", inputs={"en": "u"}, label=0)
    batches([{"record": other, "step": 3}])
    assert calls == [0, 2, 3]
