"""MPNConfig: presets by architecture, roles, validation."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from conftest import make_tiny
from peft_mpn import FFN_PRESETS, MPNConfig, MPNLayer


@pytest.mark.parametrize(
    ("arch", "key", "value"),
    [
        ("bert", "intermediate.dense", "output.dense"),
        ("xlm-roberta", "intermediate.dense", "output.dense"),
        ("distilbert", "ffn.lin1", "ffn.lin2"),
        ("gpt2", "mlp.c_fc", "mlp.c_proj"),
        ("llama", "mlp.gate_proj", "mlp.down_proj"),
        ("qwen2", "mlp.gate_proj", "mlp.down_proj"),
        ("mistral", "mlp.gate_proj", "mlp.down_proj"),
    ],
)
def test_preset_picks_ffn_modules(arch, key, value):
    model = get_peft_model(make_tiny(arch), MPNConfig())
    config = model.peft_config["default"]
    assert config.key_modules == [key] and config.value_modules == [value]
    assert config.layers_to_transform == [1]
    roles = {m.role: n for n, m in model.named_modules() if isinstance(m, MPNLayer)}
    assert roles["key"].endswith(key) and roles["value"].endswith(value)
    assert ("up" in roles) == (arch in ("llama", "qwen2", "mistral"))


def test_presets_cover_the_promised_architectures():
    promised = {"bert", "xlm-roberta", "roberta", "electra", "distilbert", "gpt2", "llama", "qwen2", "mistral"}
    assert promised <= set(FFN_PRESETS)


def test_explicit_modules_and_all_layers():
    model = get_peft_model(
        make_tiny("bert"),
        MPNConfig(
            key_modules="intermediate.dense",
            value_modules=["output.dense"],
            layers_to_transform="all",
            exclude_modules=["attention.output.dense"],
        ),
    )
    blocks = model.patch_blocks()
    assert sorted(blocks) == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert model.add_patch() == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert model.num_patches() == 2


def test_target_modules_in_peft_style_give_roles():
    config = MPNConfig(target_modules=["mlp.c_fc", "mlp.c_proj"])
    assert config.key_modules == ["mlp.c_fc"] and config.value_modules == ["mlp.c_proj"]
    gated = MPNConfig(target_modules=["gate_proj", "up_proj", "down_proj"], layers_to_transform=0)
    assert gated.up_modules == ["up_proj"] and gated.layers_to_transform == [0]
    model = get_peft_model(make_tiny("gpt2"), MPNConfig(target_modules=["mlp.c_fc", "mlp.c_proj"]))
    assert model.add_patch() == ["transformer.h.1"]


def test_role_and_block_of():
    config = MPNConfig(key_modules=["intermediate.dense"], value_modules=["output.dense"])
    assert config.role_of("bert.encoder.layer.3.intermediate.dense") == "key"
    assert config.role_of("bert.encoder.layer.3.output.dense") == "value"
    assert config.role_of("bert.encoder.layer.3.output.LayerNorm") is None
    assert config.block_of("bert.encoder.layer.3.intermediate.dense") == "bert.encoder.layer.3"
    assert config.block_of("bert.encoder.layer.3.output.dense") == "bert.encoder.layer.3"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target_modules": ["a", "b", "c", "d"]}, ValueError, "ambiguous"),
        ({"key_modules": ["intermediate.dense"]}, ValueError, "value_modules"),
        ({"layers_to_transform": "last"}, TypeError, "layers_to_transform"),
        ({"layers_to_transform": [1.5]}, TypeError, "layers_to_transform"),
        ({"key_modules": 3, "value_modules": "x"}, TypeError, "key_modules"),
        ({"init_value_std": -1.0}, ValueError, "init_value_std"),
        ({"init_value_std": "0.1"}, ValueError, "init_value_std"),
        ({"init_key_std": 0.0}, ValueError, "init_key_std"),
        ({"sharpness": float("nan")}, ValueError, "sharpness"),
    ],
)
def test_config_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        MPNConfig(**kwargs)


def test_unknown_architecture_says_how_to_name_modules():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "mystery", "to_dict": lambda self: {"model_type": "mystery"}})()
            self.fc1, self.fc2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    with pytest.raises(ValueError, match=r"key_modules=\['mlp.fc1'\]"):
        get_peft_model(Tiny(), MPNConfig())
    model = get_peft_model(Tiny(), MPNConfig(key_modules="fc1", value_modules="fc2"))
    model.add_patch(key=torch.ones(4), bias=1.0, value=torch.ones(4))
    x = torch.ones(2, 4)
    with model.disable_adapter():
        base = model(x)
    assert torch.allclose(model(x) - base, torch.full((2, 4), 5.0))  # relu(1*4 + 1) * 1
