"""Editing strategies: locating the FFN, choosing a method, FT-L save/load, LoRA placement, patch rollback."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from conftest import make_tiny, model_output
from peft_mpn import EditConfig, MPNConfig
from peft_mpn.editing.baselines import (
    METHODS,
    FTLStrategy,
    LoRAStrategy,
    PatchStrategy,
    locate_ffn,
    make_strategy,
)


BLOCK = "bert.encoder.layer.1"
MODULES = {"key": f"{BLOCK}.intermediate.dense", "value": f"{BLOCK}.output.dense"}


# ---------------------------------------------------------------------- locate_ffn / make_strategy
def test_locate_ffn_finds_the_last_layers_ffn():
    model = make_tiny("bert")
    assert locate_ffn(model) == (BLOCK, MODULES)
    assert locate_ffn(get_peft_model(model, MPNConfig())) == (BLOCK, MODULES)  # through a PeftModel too
    assert locate_ffn(make_tiny("bert"), MPNConfig(layers_to_transform=[0]))[0] == "bert.encoder.layer.0"


def test_locate_ffn_needs_a_single_block():
    with pytest.raises(ValueError, match="one FFN block.*selects 2"):
        locate_ffn(make_tiny("bert"), MPNConfig(layers_to_transform="all"))


def test_make_strategy_unknown_method_lists_the_methods():
    with pytest.raises(ValueError) as info:
        make_strategy("rome", make_tiny("bert"))
    assert "'rome'" in str(info.value) and all(repr(m) in str(info.value) for m in METHODS)


def test_make_strategy_ft_refuses_a_peft_model():
    with pytest.raises(TypeError, match="method='ft'.*plain transformers model"):
        make_strategy("ft", get_peft_model(make_tiny("bert"), MPNConfig()))


def test_make_strategy_mpn_refuses_another_adapter_type():
    lora = get_peft_model(make_tiny("bert"), LoraConfig(target_modules=["query"]))
    with pytest.raises(TypeError, match="MPN adapter"):
        make_strategy("mpn", lora)


@pytest.mark.parametrize(
    "method, cls", [("mpn", PatchStrategy), ("tpatcher", PatchStrategy), ("ft", FTLStrategy), ("lora", LoRAStrategy)]
)
def test_make_strategy_picks_the_class(method, cls):
    strategy = make_strategy(method, make_tiny("bert"))
    assert type(strategy) is cls and strategy.block == BLOCK
    assert strategy.uses_patch == (cls is PatchStrategy)


# ---------------------------------------------------------------------- FT-L
def test_ftl_trains_exactly_the_ffn_weights():
    model = make_tiny("bert")
    strategy = make_strategy("ft", model)
    assert not any(p.requires_grad for p in model.parameters())
    params = strategy.begin("r1", torch.zeros(32), EditConfig())
    expected = [f"{MODULES[role]}.{p}" for role in ("key", "value") for p in ("weight", "bias")]
    assert sorted(strategy.params) == sorted(expected)
    assert {id(p) for p in params} == {id(model.get_parameter(n)) for n in expected}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(expected)
    assert strategy.key_module is model.get_submodule(MODULES["key"])
    strategy.end()
    assert not any(p.requires_grad for p in model.parameters())


def test_ftl_save_load_round_trips_the_ffn_weights(tmp_path, ids):
    model = make_tiny("bert")
    strategy = make_strategy("ft", model)
    with torch.no_grad():
        for p in strategy.params.values():
            p.add_(torch.randn_like(p))  # "edited" weights
    saved = {name: p.detach().clone() for name, p in strategy.params.items()}
    edited_logits = model_output(model, ids)
    strategy.save(tmp_path / "weights")
    assert (tmp_path / "weights" / "ffn.safetensors").exists()

    with torch.no_grad():
        for p in strategy.params.values():
            p.mul_(-2.0).add_(1.0)
    assert not torch.allclose(model_output(model, ids), edited_logits)
    strategy.load(tmp_path / "weights")
    for name, p in strategy.params.items():
        assert torch.equal(p, saved[name]), name
    torch.testing.assert_close(model_output(model, ids), edited_logits, atol=0, rtol=0)

    other = make_strategy("ft", make_tiny("bert", seed=3))  # a fresh model takes the saved FFN
    other.load(tmp_path / "weights")
    for name, p in other.params.items():
        assert torch.equal(p, saved[name]), name


# ---------------------------------------------------------------------- LoRA
def test_lora_wraps_exactly_the_last_ffn_key_and_value():
    strategy = make_strategy("lora", make_tiny("bert"))
    assert isinstance(strategy.model, PeftModel)
    wrapped = {n for n, m in strategy.model.get_base_model().named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == set(MODULES.values())
    params = strategy.begin("r1", torch.zeros(32), EditConfig())
    trainable = [p for p in strategy.model.parameters() if p.requires_grad]
    assert params and {id(p) for p in params} == {id(p) for p in trainable}
    names = {n for n, p in strategy.model.named_parameters() if p.requires_grad}
    assert all("lora_" in n and (MODULES["key"] in n or MODULES["value"] in n) for n in names)
    assert strategy.key_module is strategy.model.get_base_model().get_submodule(MODULES["key"])


def test_lora_uses_the_given_config_and_keeps_a_peft_model():
    strategy = LoRAStrategy(make_tiny("bert"), LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0))
    layer = strategy.model.get_base_model().get_submodule(MODULES["key"])
    assert layer.r["default"] == 2

    again = LoRAStrategy(strategy.model)  # an existing LoRA PeftModel is used as is
    assert again.model is strategy.model and (again.block, again.modules) == (BLOCK, MODULES)
    assert make_strategy("lora", strategy.model).modules == MODULES


def test_lora_peft_model_must_wrap_the_ffn():
    lora = get_peft_model(make_tiny("bert"), LoraConfig(target_modules=["query", "value"]))
    with pytest.raises(ValueError, match="key and value projections of one FFN block"):
        LoRAStrategy(lora)


def test_lora_save_load_round_trip(tmp_path, ids):
    strategy = make_strategy("lora", make_tiny("bert"))
    with torch.no_grad():
        for p in strategy.begin("r1", torch.zeros(32), EditConfig()):
            p.add_(0.5 * torch.randn_like(p))
    edited = model_output(strategy.model, ids)
    strategy.save(tmp_path / "weights")
    with torch.no_grad():
        for p in strategy.begin("r1", torch.zeros(32), EditConfig()):
            p.zero_()
    assert not torch.allclose(model_output(strategy.model, ids), edited)
    strategy.load(tmp_path / "weights")
    torch.testing.assert_close(model_output(strategy.model, ids), edited, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- MPN patches
def test_patch_begin_adds_a_transformer_patcher_patch_and_abort_removes_it(ids):
    strategy = make_strategy("mpn", make_tiny("bert"))
    model = strategy.model
    before = model_output(model, ids)
    assert strategy.newest_patch() is None
    h = torch.randn(32, generator=torch.Generator().manual_seed(0))
    params = strategy.begin("r1", h, EditConfig(value_init_std=1.0))
    assert model.num_patches() == 1 and len(params) == 3  # key weight, key bias, value
    key, bias = strategy.newest_patch()
    assert float((key[0] @ h + bias[0]).detach()) == pytest.approx(1.0, abs=1e-5)  # pre-activation 1 on the input
    assert [id(p) for p in params] == [id(key), id(bias), id(strategy.value_parameters()[0])]
    assert not torch.allclose(model_output(model, ids), before)

    strategy.abort()
    assert model.num_patches() == 0 and strategy.newest_patch() is None
    torch.testing.assert_close(model_output(model, ids), before, atol=0, rtol=0)


def test_patch_abort_keeps_earlier_frozen_patches(ids):
    strategy = make_strategy("mpn", make_tiny("bert"))
    model = strategy.model
    strategy.begin("r1", torch.randn(32), EditConfig())
    strategy.end()
    after_first = model_output(model, ids)
    strategy.begin("r2", torch.randn(32), EditConfig())
    assert model.num_patches() == 2 and model.num_frozen_patches() == 1
    strategy.abort()
    assert model.num_patches() == 1 and model.num_frozen_patches() == 1
    torch.testing.assert_close(model_output(model, ids), after_first, atol=0, rtol=0)


def test_patch_value_init_is_deterministic_per_record_and_seed():
    def value(record_id, seed):
        strategy = make_strategy("mpn", make_tiny("bert"))
        strategy.begin(record_id, torch.ones(32), EditConfig(seed=seed))
        return strategy.value_parameters()[0].detach().clone()

    assert torch.equal(value("a", 0), value("a", 0))
    assert not torch.equal(value("a", 0), value("b", 0))
    assert not torch.equal(value("a", 0), value("a", 1))


def test_patch_strategy_needs_one_block():
    model = get_peft_model(make_tiny("bert"), MPNConfig(layers_to_transform="all"))
    with pytest.raises(ValueError, match="one FFN block per patch"):
        PatchStrategy(model)
    with pytest.raises(TypeError, match="MPN adapter"):
        PatchStrategy(make_tiny("bert"))
