"""Non-finite numbers are stopped where they enter: configs, add_patch, the base's edited layer, training losses."""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model

from conftest import lm_edit_records, lm_word_tokenizer, make_tiny, make_tiny_lm, synthetic_texts, translate
from peft_mpn import BaselineConfig, CausalLMEditor, EditConfig, EditRecord, MPNConfig, MPNEditor
from peft_mpn.editing.losses import LossParts, NonFiniteLoss, check_finite_loss
from peft_mpn.tasks.generation.collator import GenerationEditCollator


NAN, INF = float("nan"), float("inf")
LANGS = ["en", "fr"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", NAN), ("lr", INF), ("memory_threshold", NAN), ("gap_margin", -INF), ("value_init_std", NAN),
     ("memory_batch_size", 2.5), ("memory_batch_size", 0), ("memory_batch_size", True)],
)  # fmt: skip
def test_edit_config_refuses_non_finite_and_non_int_values(field, value):
    with pytest.raises(ValueError, match=f"EditConfig.{field} must be"):
        EditConfig(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("init_value_std", NAN), ("init_key_std", INF), ("sharpness", NAN)])
def test_mpn_config_refuses_non_finite_values(field, value):
    with pytest.raises(ValueError, match=f"MPNConfig.{field} must be"):
        MPNConfig(**{field: value})


@pytest.mark.parametrize("value", [2.5, -1, 0])
def test_collator_max_length_and_memory_batch_size_are_positive_ints(value):
    tokenizer = lm_word_tokenizer()
    with pytest.raises(ValueError, match="max_length must be an int >= 1"):
        GenerationEditCollator(tokenizer, max_length=value)
    with pytest.raises(ValueError, match="memory_batch_size must be an int >= 1"):
        GenerationEditCollator(tokenizer, memory_batch_size=value)


@pytest.mark.parametrize("field", ["key", "bias", "value"])
def test_add_patch_refuses_non_finite_initialisations(field):
    model = get_peft_model(make_tiny("bert"), MPNConfig())
    given = {"key": torch.ones(32), "bias": 0.0, "value": torch.ones(32)}
    given[field] = NAN if field == "bias" else torch.full((32,), NAN)
    with pytest.raises(ValueError, match=f"add_patch: {field} for FFN block .* NaN or infinite"):
        model.add_patch(**given)
    assert model.num_patches() == 0  # nothing grew


def test_check_finite_loss():
    ok = LossParts(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0))
    check_finite_loss(ok, 0)
    bad = LossParts(torch.tensor(NAN), torch.tensor(NAN), torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(NonFiniteLoss, match="non-finite at step 3") as caught:
        check_finite_loss(bad, 3)
    assert caught.value.losses["total"] is None and caught.value.losses["memory"] == 0.0


def _records(model, tokenizer, n=2):
    texts = [t for t, _ in synthetic_texts(40, 7)]
    with torch.no_grad():
        preds = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    return [
        EditRecord(id=f"r{i}", inputs={lang: translate(t, lang) for lang in LANGS}, label=1 - p)
        for i, (t, p) in enumerate(zip(texts, preds))
    ][:n]


def test_nan_in_the_base_edited_layer_is_refused_at_editor_start(classifier):
    model, tokenizer = classifier()
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = NAN
    with pytest.raises(ValueError, match=r"edited layer holds NaN or infinite weights \(.*output\.dense"):
        MPNEditor(model, tokenizer, languages=LANGS, progress=False)


@pytest.mark.parametrize("fast", [True, False])
def test_nan_below_the_edited_layer_is_a_clear_error_not_a_nan_success(classifier, fast):
    model, tokenizer = classifier()
    records = _records(model, tokenizer, n=1)
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[0, 0] = NAN  # not the edited layer: the start check passes
    editor = MPNEditor(model, tokenizer, languages=LANGS, fast=fast, progress=False)
    with pytest.raises(ValueError, match="'r0': the model's input to the edited FFN block is NaN or infinite"):
        editor.edit(records[0])
    assert editor.model.num_patches() == 0


def test_nan_below_the_edited_layer_of_a_causal_lm_is_a_clear_error():
    tokenizer = lm_word_tokenizer()
    model = make_tiny_lm("llama", len(tokenizer))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(NAN)
    editor = CausalLMEditor(model, tokenizer, ["en", "fr"], progress=False)
    with pytest.raises(ValueError, match="input to the edited FFN block is NaN or infinite"):
        editor.edit(lm_edit_records(1, seed=3)[0])
    assert editor.model.num_patches() == 0


@pytest.mark.parametrize(("method", "fast"), [("mpn", True), ("mpn", False), ("ft", True), ("lora", True)])
def test_a_diverging_edit_stops_rolls_back_and_fails(classifier, method, fast, caplog):
    model, tokenizer = classifier()
    memory = [translate(t, lang) for t, _ in synthetic_texts(30, 5) for lang in LANGS]
    config = EditConfig(lr=1e30, value_lr_scale=1e30, max_steps=30)  # finite settings that overflow in training
    # FT-L and LoRA train with their own BaselineConfig, not EditConfig's learning rate: overflow it the same way
    kwargs = {"baseline": BaselineConfig(lr=1e30, max_steps=30, norm_constraint=None)} if method != "mpn" else {}
    editor = MPNEditor(
        model, tokenizer, LANGS, memory, method=method, fast=fast, config=config, progress=False, **kwargs
    )
    before = {n: p.detach().clone() for n, p in editor.model.named_parameters()}
    with caplog.at_level("WARNING"):
        results = editor.edit_stream(_records(model, tokenizer))
    assert [r.success for r in results] == [False, False]
    assert all(r.losses["total"] is None or not math.isfinite(r.losses["total"]) for r in results)
    assert "failed and was rolled back" in caplog.text
    after = dict(editor.model.named_parameters())
    assert before.keys() == after.keys() and all(torch.equal(after[n], p) for n, p in before.items())
    if method == "mpn":
        assert editor.model.num_patches() == 0  # the patches were popped


def test_a_diverging_generation_edit_pops_its_patch():
    tokenizer = lm_word_tokenizer()
    model = make_tiny_lm("llama", len(tokenizer))
    config = EditConfig(lr=1e30, value_lr_scale=1e30, max_steps=30)
    editor = CausalLMEditor(model, tokenizer, ["en", "fr"], progress=False, config=config)
    result = editor.edit(lm_edit_records(1, seed=3)[0])
    assert not result.success and editor.model.num_patches() == 0


def test_a_damaged_ft_checkpoint_names_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from peft_mpn.editing.baselines import FTLStrategy

    strategy = FTLStrategy(make_tiny("bert"))
    strategy.save(tmp_path)
    path = tmp_path / "ffn.safetensors"
    tensors = load_file(path)
    next(iter(tensors.values())).fill_(NAN)
    save_file(tensors, path)
    with pytest.raises(ValueError, match=rf"{path} lacks \[\] or holds non-finite values"):
        strategy.load(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{path} can't be read"):
        strategy.load(tmp_path)
