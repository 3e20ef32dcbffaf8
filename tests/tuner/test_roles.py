"""FFN modules given in the wrong roles get advice that names the right ones."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from conftest import make_tiny
from peft_mpn import MPNConfig


BERT_RIGHT = "key_modules=['intermediate.dense'], value_modules=['output.dense']"
CASES = [
    ("bert", dict(key_modules="output.dense", value_modules="intermediate.dense"), BERT_RIGHT),
    ("bert", dict(target_modules=["output.dense", "intermediate.dense"]), BERT_RIGHT),
    ("gpt2", dict(key_modules="mlp.c_proj", value_modules="mlp.c_fc"), "key_modules=['mlp.c_fc']"),
    ("llama", dict(key_modules="mlp.up_proj", up_modules="mlp.gate_proj", value_modules="mlp.down_proj"),
     "key_modules=['mlp.gate_proj'], value_modules=['mlp.down_proj'], up_modules=['mlp.up_proj']"),
]  # fmt: skip


@pytest.mark.parametrize(("arch", "given", "right"), CASES)
def test_swapped_roles_of_a_known_architecture(arch, given, right):
    with pytest.raises(ValueError, match="in the wrong roles") as caught:
        get_peft_model(make_tiny(arch), MPNConfig(**given))
    assert right in str(caught.value)


class Plain(torch.nn.Module):
    """An architecture without a preset: blocks of fc1 (widen) then fc2 (project back)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(2))
        for block in self.blocks:
            block.fc1, block.fc2 = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)


def test_swapped_roles_of_an_unknown_architecture():
    with pytest.raises(ValueError, match=r"look swapped.*Pass key_modules=\['fc1'\], value_modules=\['fc2'\]"):
        get_peft_model(Plain(), MPNConfig(key_modules="fc2", value_modules="fc1"))
    model = get_peft_model(Plain(), MPNConfig(key_modules="fc1", value_modules="fc2"))
    assert model.add_patch() == ["blocks.1"]
