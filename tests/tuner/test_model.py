"""MPNModel: injection, growth, freezing, disable, save/load, merge, multiple adapters, Trainer resume."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import ARCHS, make_tiny, model_output
from peft_mpn import MPNConfig, MPNLayer


def patched(arch: str, seed: int = 0, **config_kwargs) -> PeftModel:
    config_kwargs.setdefault("init_value_std", 0.5)
    return get_peft_model(make_tiny(arch, seed), MPNConfig(**config_kwargs))


def randomise_patches(model: PeftModel, seed: int = 3) -> None:
    """Give every patch tensor visible values, so that exactness tests compare something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "mpn_patches" in name and tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
                if "bias" in name:  # fire: a patch below 0 adds (nearly) nothing with the default sharpness
                    tensor.abs_().add_(4.0)


def grow(model: PeftModel) -> None:
    """Three patches, two of them frozen, then a fourth (trainable) one of two neurons."""
    model.add_patch()
    model.add_patch()
    model.freeze_patches()
    model.add_patch()
    model.add_patch(num_neurons=2)
    randomise_patches(model)


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("arch", ARCHS)
def test_injects_last_layer_ffn_and_trains_only_patches(arch, ids):
    model = patched(arch)
    wrapped = {n: m.role for n, m in model.named_modules() if isinstance(m, MPNLayer)}
    assert len(wrapped) == (3 if arch in ("llama", "qwen2") else 2)
    assert all(".1." in name for name in wrapped), wrapped  # layer 1 of 2: the last one
    assert sorted(wrapped.values()) == (["key", "up", "value"] if arch in ("llama", "qwen2") else ["key", "value"])
    assert not any("attention" in name or "attn" in name for name in wrapped)
    assert trainable_names(model) == []
    model.add_patch()
    names = trainable_names(model)
    assert names and all(".mpn_patches." in n for n in names)
    assert model.num_patches() == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_patch_is_noop_until_trained_and_disable_is_exact(arch, ids):
    base_out = model_output(make_tiny(arch), ids)
    model = get_peft_model(make_tiny(arch), MPNConfig())  # init_value_std=0: an untrained patch changes nothing
    model.add_patch()
    assert torch.equal(model_output(model, ids), base_out)
    randomise_patches(model)
    assert not torch.allclose(model_output(model, ids), base_out)
    with model.disable_adapter():
        assert torch.equal(model_output(model, ids), base_out)
    assert not torch.allclose(model_output(model, ids), base_out)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_after_growth(arch, ids, tmp_path):
    model = patched(arch)
    grow(model)
    expected = model_output(model, ids)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"README.md", "adapter_config.json", "adapter_model.safetensors"}

    again = PeftModel.from_pretrained(make_tiny(arch), tmp_path)
    assert (model_output(again, ids) - expected).abs().max() <= 1e-6
    assert again.num_patches() == 4 and again.num_frozen_patches() == 2
    assert trainable_names(again) == []  # loaded for inference

    trainable = PeftModel.from_pretrained(make_tiny(arch), tmp_path, is_trainable=True)
    names = trainable_names(trainable)
    assert names and all(".weights." in n or ".biases." in n for n in names)
    assert len([n for n in names if ".weights." in n]) == (6 if arch in ("llama", "qwen2") else 4)  # 2 patches


def test_transformers_load_adapter(ids, tmp_path):
    model = patched("bert")
    grow(model)
    expected = model_output(model, ids)
    model.save_pretrained(tmp_path)
    base = make_tiny("bert")
    base.load_adapter(str(tmp_path))
    assert (model_output(base, ids) - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_and_unmerge_are_exact(arch, ids):
    model = patched(arch)
    grow(model)
    expected = model_output(model, ids)
    weights_before = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters()}
    model.merge_adapter()
    assert (model_output(model, ids) - expected).abs().max() <= 1e-5
    model.unmerge_adapter()
    assert torch.equal(model_output(model, ids), expected)
    after = dict(model.get_base_model().named_parameters())
    assert all(torch.equal(after[n], w) for n, w in weights_before.items())


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta", "distilbert", "gpt2", "llama"])
def test_merge_and_unload_reloads_with_plain_from_pretrained(arch, ids, tmp_path):
    model = patched(arch)
    grow(model)
    expected = model_output(model, ids)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, MPNLayer) for m in merged.modules())
    assert (model_output(merged, ids) - expected).abs().max() <= 1e-5
    merged.save_pretrained(tmp_path)
    auto = AutoModelForCausalLM if arch in ("gpt2", "llama") else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(tmp_path).eval()
    assert (model_output(reloaded, ids) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ["qwen2"])
def test_merge_and_unload_refuses_unsaveable_width_but_merges_in_memory(arch, ids):
    model = patched(arch)
    grow(model)
    expected = model_output(model, ids)
    with pytest.raises(ValueError, match="uniform_width=False"):
        model.merge_and_unload()
    assert (model_output(model, ids) - expected).abs().max() == 0  # the refusal changed nothing
    merged = model.merge_and_unload(uniform_width=False)
    assert (model_output(merged, ids) - expected).abs().max() <= 1e-5


def test_frozen_patches_stay_frozen_everywhere(ids):
    model = patched("bert")
    model.add_patch()
    model.add_patch()
    model.freeze_patches()
    assert trainable_names(model) == []
    model.add_patch()
    newest = trainable_names(model)
    assert len(newest) == 3  # key weight, key bias, value of the newest patch only

    model.set_adapter("default")
    assert trainable_names(model) == newest
    model.base_model.disable_adapter_layers()
    model.base_model.enable_adapter_layers()
    assert trainable_names(model) == newest
    with model.disable_adapter():
        assert trainable_names(model) == []
    assert trainable_names(model) == newest

    model.unfreeze_patches()
    assert len(trainable_names(model)) == 9
    assert model.num_frozen_patches() == 0 and model.num_patches() == 3


def test_freeze_consolidates_without_changing_outputs(ids):
    model = patched("bert")
    for _ in range(5):
        model.add_patch()
    randomise_patches(model)
    before = model_output(model, ids)
    model.freeze_patches()
    layer = next(m for m in model.modules() if isinstance(m, MPNLayer) and m.role == "key")
    bank = layer.bank("default")
    assert len(bank.weights) == 0 and bank.frozen_weight.shape == (5, 32)
    assert (model_output(model, ids) - before).abs().max() <= 1e-6
    model.unfreeze_patches()
    assert len(bank.weights) == 5
    assert (model_output(model, ids) - before).abs().max() <= 1e-6


def test_growing_keeps_old_parameters(ids):
    model = patched("bert")
    model.add_patch()
    first = model.patch_parameters()
    model.add_patch()
    second = model.patch_parameters()
    assert all(any(p is q for q in second) for p in first)
    assert len(second) == 2 * len(first)
    assert len(model.patch_parameters(newest_only=True)) == len(first)


def test_two_adapters_set_delete_and_load(ids, tmp_path):
    base_out = model_output(make_tiny("bert"), ids)
    model = patched("bert")
    model.add_patch()
    randomise_patches(model, seed=1)
    out_a = model_output(model, ids)
    model.save_pretrained(tmp_path / "a")

    model.add_adapter("b", MPNConfig(init_value_std=0.5))
    model.set_adapter("b")
    assert torch.equal(model_output(model, ids), base_out)  # b has no patches yet
    model.add_patch()
    model.add_patch()
    assert model.num_patches() == 2 and model.num_patches("default") == 1
    out_b = model_output(model, ids)
    assert not torch.allclose(out_b, out_a)
    assert all(".b." in n for n in trainable_names(model))

    model.set_adapter("default")
    assert torch.equal(model_output(model, ids), out_a)
    model.delete_adapter("b")
    assert list(model.peft_config) == ["default"]
    assert torch.equal(model_output(model, ids), out_a)

    model.load_adapter(tmp_path / "a", adapter_name="c")
    model.set_adapter("c")
    assert (model_output(model, ids) - out_a).abs().max() <= 1e-6


def test_load_adapter_grows_an_existing_adapter(ids, tmp_path):
    model = patched("bert")
    grow(model)
    expected = model_output(model, ids)
    model.save_pretrained(tmp_path)
    fresh = patched("bert")  # same base, no patches
    fresh.load_adapter(tmp_path, adapter_name="default", is_trainable=True)
    fresh.eval()
    assert fresh.num_patches() == 4 and fresh.num_frozen_patches() == 2
    assert fresh.peft_config["default"].patch_sizes == model.peft_config["default"].patch_sizes
    assert (model_output(fresh, ids) - expected).abs().max() <= 1e-6


def test_capture_activations_sees_key_preactivation(ids):
    model = patched("bert")
    captured_input = {}
    ffn_in = model.get_base_model().bert.encoder.layer[1].intermediate.dense
    handle = ffn_in.register_forward_hook(lambda mod, args, out: captured_input.update(h=args[0]))
    model_output(model, ids)
    handle.remove()
    h = captured_input["h"][0, 0]  # [CLS] of the first example
    model.add_patch(key=h / h.norm() ** 2, bias=0.0)  # Transformer-Patcher's initialisation
    with model.capture_activations() as acts:
        model(input_ids=ids)
    (block,) = acts
    assert acts[block].shape == (3, 7, 1)
    assert acts[block][0, 0, 0].item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("sharpness", [1.0, 10.0])
def test_patch_formula_uses_ffn_activation(sharpness):
    """A BERT patch adds (v/s) * gelu(s(k.x + b)) to the FFN output; a LLaMA patch (v/s) * silu(s(k.x + b)) * 1."""
    torch.manual_seed(0)
    for arch in ("bert", "llama"):
        model = patched(arch, sharpness=sharpness)
        blocks = model.patch_blocks()
        (parts,) = blocks.values()
        x = torch.randn(4, 32)
        k, b, v = torch.randn(32), torch.tensor([0.3]), torch.randn(32)
        model.add_patch(key=k, bias=b, value=v)
        key, value = parts["key"], parts["value"]
        with model.capture_activations() as captured:
            hidden = key(x)
        assert torch.allclose(captured[key.block], (x @ k + b).unsqueeze(-1), atol=1e-5)  # natural scale
        act = torch.nn.functional.gelu if arch == "bert" else torch.nn.functional.silu
        if arch == "bert":
            out = value(act(hidden))
            base = value.base_layer(act(hidden[:, :64]))
        else:
            out = value(act(hidden) * parts["up"](x))
            base = value.base_layer(act(hidden[:, :64]) * parts["up"].base_layer(x))
        manual = act(sharpness * (x @ k + b)).unsqueeze(-1) * v / sharpness
        assert torch.allclose(out - base, manual, atol=1e-5)


def test_sharpness_silences_patches_below_zero():
    """With the default sharpness a patch at pre-activation -2 adds ~0; as a plain GELU unit it would leak."""
    x = torch.randn(4, 32)
    k = torch.zeros(32)
    outputs = {}
    for sharpness in (1.0, 10.0):
        model = patched("bert", sharpness=sharpness)
        (parts,) = model.patch_blocks().values()
        model.add_patch(key=k, bias=-2.0, value=torch.full((32,), 10.0))
        hidden = parts["key"](x)
        act = torch.nn.functional.gelu
        outputs[sharpness] = (parts["value"](act(hidden)) - parts["value"].base_layer(act(hidden[:, :64]))).abs().max()
    assert outputs[1.0] > 0.4  # 10 * |gelu(-2)| = 0.455
    assert outputs[10.0] < 1e-6
    with pytest.raises(ValueError, match="sharpness"):
        MPNConfig(sharpness=0)


def test_trainer_checkpoint_and_resume_round_trip(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    generator = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "input_ids": torch.randint(3, 100, (16, 6), generator=generator).tolist(),
            "labels": torch.randint(0, 2, (16,), generator=generator).tolist(),
        }
    )

    def run(output_dir, resume=None, max_steps=6):
        model = patched("bert")
        model.add_patch()
        model.freeze_patches()
        model.add_patch()
        args = TrainingArguments(
            output_dir=str(output_dir),
            max_steps=max_steps,
            save_steps=3,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            report_to=[],
            use_cpu=True,
            seed=0,
            logging_steps=100,
            dataloader_num_workers=0,
        )
        Trainer(model=model, args=args, train_dataset=data).train(resume_from_checkpoint=resume)
        return model

    full = run(tmp_path / "full")
    ckpt = tmp_path / "full" / "checkpoint-3"
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["num_frozen"] == {"bert.encoder.layer.1": 1}
    resumed = run(tmp_path / "resumed", resume=str(ckpt))
    assert resumed.num_frozen_patches() == 1 and resumed.num_patches() == 2
    for (name, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    frozen = [b for n, b in full.named_buffers() if n.endswith("frozen_weight")]
    frozen_resumed = [b for n, b in resumed.named_buffers() if n.endswith("frozen_weight")]
    assert all(torch.equal(a, b) for a, b in zip(frozen, frozen_resumed))
    trained = full.patch_parameters(newest_only=True)
    assert any(p.abs().sum() > 0 for p in trained)


# ---------------------------------------------------------------------- bad input
def test_missing_target_module_names_the_fix():
    with pytest.raises(ValueError, match=r"key_modules entry 'ffn.fc_in' matches no module.*intermediate.dense"):
        get_peft_model(make_tiny("bert"), MPNConfig(key_modules="ffn.fc_in", value_modules="output.dense"))


def test_key_module_without_value_module():
    config = MPNConfig(
        key_modules="intermediate.dense",
        value_modules="output.dense",
        layers_to_transform=[1],
        exclude_modules=["attention.output.dense", "layer.1.output.dense"],
    )
    with pytest.raises(ValueError, match="has the key module .* but no value module"):
        get_peft_model(make_tiny("bert"), config)


def test_value_module_that_does_not_fit_the_key():
    config = MPNConfig(key_modules="intermediate.dense", value_modules="attention.output.dense")
    with pytest.raises(ValueError, match="outputs 64 units but the value module .* takes 32 inputs"):
        get_peft_model(make_tiny("bert"), config)


def test_layers_that_do_not_exist():
    with pytest.raises(ValueError, match=r"layers \[7\] that this model does not have"):
        get_peft_model(make_tiny("bert"), MPNConfig(layers_to_transform=[7]))


def test_adapter_on_base_with_other_ffn_sizes(tmp_path):
    import transformers as tf

    model = patched("bert")
    model.add_patch()
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    wider = tf.BertForSequenceClassification(
        tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    )
    with pytest.raises(ValueError, match=r"made for an FFN of dims \[32, 64, 32\].*has \[32, 48, 32\]"):
        PeftModel.from_pretrained(wider, tmp_path)
    deeper = make_tiny("bert")
    deeper.bert.encoder.layer = deeper.bert.encoder.layer[:1]
    with pytest.raises(ValueError, match="does not have|patches for FFN blocks"):
        PeftModel.from_pretrained(deeper, tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"key": torch.zeros(31)}, r"key for FFN block .* must have shape \(1, 32\) or \(32,\).*got \(31,\)"),
        ({"value": torch.zeros(2, 32)}, r"value .* must have shape \(1, 32\)"),
        ({"bias": torch.zeros(3)}, r"bias .* must have shape \(1,\)"),
        ({"num_neurons": 2, "key": torch.zeros(32)}, r"must have shape \(2, 32\)"),
        ({"num_neurons": 0}, "num_neurons must be a positive int"),
        ({"key": {"elsewhere": torch.zeros(32)}}, "no entry for FFN block"),
        ({"blocks": ["nope"]}, "unknown FFN blocks"),
    ],
)
def test_bad_patch_initialisation(kwargs, match):
    model = patched("bert")
    with pytest.raises(ValueError, match=match):
        model.add_patch(**kwargs)
    assert model.num_patches() == 0  # nothing was half-added


def test_wrong_type_of_patch_initialisation():
    with pytest.raises(TypeError, match="key must be a tensor"):
        patched("bert").add_patch(key="ones")


def test_several_active_adapters_need_a_name():
    model = patched("bert")
    model.add_adapter("b", MPNConfig())
    model.base_model.set_adapter(["default", "b"])
    with pytest.raises(ValueError, match="pass adapter_name="):
        model.add_patch()
    with pytest.raises(ValueError, match="No adapter named 'zzz'"):
        model.add_patch(adapter_name="zzz")


def test_patch_blocks_follow_changes_of_the_module_tree():
    """The MPN layers are looked up once, and again after adapters inject new layers."""
    model = get_peft_model(make_tiny("bert"), MPNConfig(layers_to_transform=[0]))
    assert list(model.base_model.patch_blocks("default")) == ["bert.encoder.layer.0"]
    model.add_adapter("other", MPNConfig(layers_to_transform=[1]))  # wraps the FFN of layer 1 too
    assert list(model.base_model.patch_blocks("other")) == ["bert.encoder.layer.1"]
    assert list(model.base_model.patch_blocks("default")) == ["bert.encoder.layer.0"]
    model.base_model.add_patch(adapter_name="other")
    assert model.base_model.num_patches("other") == 1 and model.base_model.num_patches("default") == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_inference_equals_dense_and_leaves_merge_and_save_unchanged(arch, tmp_path, monkeypatch):
    """Many frozen patches, most of them silent on the batch: the sparse path (non-gated blocks) gives the dense
    logits; merging, unmerging, saving and loading are unchanged by it."""
    monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 32)
    model = patched(arch).eval()
    parts = next(iter(model.patch_blocks().values()))
    d_in, d_out = parts["key"].in_features, parts["value"].out_features
    generator = torch.Generator().manual_seed(0)
    for i in range(64):
        key = torch.randn(d_in, generator=generator) / d_in**0.5
        value = torch.randn(d_out, generator=generator)
        model.add_patch(key=key, bias=-100.0 if i % 4 else 0.5, value=value)  # 16 can fire, 48 never do
    model.freeze_patches()
    ids = torch.randint(3, 100, (8, 12), generator=generator)  # 96 token rows: the fused weights apply
    monkeypatch.setattr(MPNLayer, "SPARSE", False)
    dense = model_output(model, ids)
    monkeypatch.setattr(MPNLayer, "SPARSE", True)
    outputs = [model_output(model, ids) for _ in range(2)]  # a probe pass, then the sparse one
    state = parts["key"].__dict__.get("_sparse_state")
    if arch in ("llama", "qwen2"):
        assert state is None  # gated: the dense path
    else:
        assert state == {"silent_below": -6.0, "kept": 16}  # GELU (exact or tanh form) is 0 from -6 on
    assert torch.equal(outputs[0], dense)
    torch.testing.assert_close(outputs[1], dense, atol=1e-5, rtol=1e-5)
    with model.disable_adapter():
        assert not torch.allclose(model_output(model, ids), dense, atol=1e-3)  # the firing patches matter

    model.merge_adapter()
    torch.testing.assert_close(model_output(model, ids), dense, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(model_output(model, ids), outputs[1], atol=0, rtol=0)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny(arch), tmp_path).eval()
    for _ in range(2):
        torch.testing.assert_close(model_output(loaded, ids), dense, atol=1e-5, rtol=1e-5)
