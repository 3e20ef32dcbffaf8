"""Undo and inspect edits: patch ids, `MPNModel.edits()`, `MPNModel.remove_edit(id)` (exact), save/load."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model

from conftest import ARCHS, make_tiny, model_output
from peft_mpn import MPNConfig, MPNLayer


def randomise(model: PeftModel, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "mpn_patches" in name and tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
                if "bias" in name:  # fire, so that every patch changes the output
                    tensor.abs_().add_(4.0)


def grown(arch: str) -> PeftModel:
    """Patches of edits a (frozen), b (frozen, 2 neurons), c (frozen), an unnamed one, then d and b again."""
    model = get_peft_model(make_tiny(arch), MPNConfig(init_value_std=0.5))
    model.add_patch(edit_id="a")
    model.add_patch(num_neurons=2, edit_id="b")
    model.add_patch(edit_id="c")
    model.freeze_patches()
    model.add_patch()
    model.add_patch(edit_id="d")
    model.add_patch(edit_id="b")
    randomise(model)
    return model


def without_rows(model: PeftModel, drop: list[int], arch: str) -> PeftModel:
    """A fresh adapter holding the rows of ``model`` except the patches at ``drop``, all frozen (independent of
    ``remove_edit``: sliced from the full tensors by the patch sizes)."""
    reference = get_peft_model(make_tiny(arch), MPNConfig())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MPNLayer)}
    for name, layer in reference.named_modules():
        if not isinstance(layer, MPNLayer):
            continue
        source = layers[name].bank("default")
        sizes = source.sizes.tolist()
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        rows = [r for i, (s, n) in enumerate(zip(starts, sizes)) if i not in drop for r in range(s, s + n)]
        kept = [n for i, n in enumerate(sizes) if i not in drop]
        bank = layer.bank("default")
        bank.resize(kept, len(kept))
        with torch.no_grad():
            bank.frozen_weight.copy_(source.weight()[rows])
            if bank.has_bias:
                bank.frozen_bias.copy_(source.bias()[rows])
    return reference


@pytest.mark.parametrize("arch", ARCHS)
def test_remove_edit_equals_the_adapter_without_those_units(arch, ids):
    model = grown(arch)
    removed = model.remove_edit("b")  # a frozen patch and a trainable one
    assert removed == 2
    expected = model_output(without_rows(grown(arch), [1, 5], arch), ids)
    assert torch.equal(model_output(model, ids), expected)
    assert model.num_patches() == 4 and model.num_frozen_patches() == 2
    assert [e["id"] for e in model.edits()] == ["a", "c", "d"]
    model.remove_edit("d")  # the last trainable one
    model.remove_edit("a")
    assert torch.equal(model_output(model, ids), model_output(without_rows(grown(arch), [0, 1, 4, 5], arch), ids))
    config = model.peft_config["default"]
    assert config.patch_ids == {block: ["c", None] for block in config.patch_sizes}


def test_edits_lists_ids_patches_and_recorded_info():
    model = grown("bert")
    model.record_edit("a", languages=["en", "fr"], steps=12, seconds=0.1)
    listed = {e["id"]: e for e in model.edits()}
    assert list(listed) == ["a", "b", "c", "d"]
    assert listed["a"] == {
        "id": "a",
        "patches": 1,
        "neurons": 1,
        "frozen": True,
        "languages": ["en", "fr"],
        "steps": 12,
        "seconds": 0.1,
    }
    assert listed["b"]["patches"] == 2 and listed["b"]["neurons"] == 3 and listed["b"]["frozen"] is False
    with pytest.raises(ValueError, match="no patch of adapter 'default' fixes edit 'zz'"):
        model.record_edit("zz", steps=1)
    model.remove_edit("a")
    assert "a" not in model.peft_config["default"].edit_log


def test_remove_edit_unknown_id_and_merged_adapter_are_refused():
    model = grown("bert")
    with pytest.raises(ValueError, match=r"no patch of adapter 'default' fixes edit 'nope'.*'a', 'b', 'c', 'd'"):
        model.remove_edit("nope")
    model.merge_adapter()
    with pytest.raises(ValueError, match="unmerge_adapter"):
        model.remove_edit("a")
    model.unmerge_adapter()
    assert model.remove_edit("a") == 1
    with pytest.raises(ValueError, match="edit_id must be a non-blank string"):
        model.add_patch(edit_id=" ")


def test_pop_patch_drops_the_newest_id():
    model = grown("bert")
    model.record_edit("b", steps=3)
    model.pop_patch()
    config = model.peft_config["default"]
    assert [ids[-1] for ids in config.patch_ids.values()] == ["d"]
    assert "b" in config.edit_log  # b still has its frozen patch


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_ids_survive_save_and_load_and_removal_after_reload_is_exact(arch, ids, tmp_path):
    model = grown(arch)
    model.record_edit("c", languages=["en"], steps=5)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert list(saved["patch_ids"].values()) == [["a", "b", "c", None, "d", "b"]]
    assert saved["edit_log"] == {"c": {"languages": ["en"], "steps": 5}}
    again = PeftModel.from_pretrained(make_tiny(arch), tmp_path, is_trainable=True)
    assert [e["id"] for e in again.edits()] == ["a", "b", "c", "d"]
    again.remove_edit("c")
    assert torch.equal(model_output(again, ids), model_output(without_rows(grown(arch), [2], arch), ids))
    frozen_only = PeftModel.from_pretrained(make_tiny(arch), tmp_path)  # inference mode: frozen or not, it goes
    frozen_only.remove_edit("b")
    expected = model_output(without_rows(grown(arch), [1, 5], arch), ids)
    assert (model_output(frozen_only, ids) - expected).abs().max() < 1e-6


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_saved_adapter_edits_list_and_remove_without_the_base_model(arch, ids, tmp_path):
    from peft_mpn.tuner.edits import remove_saved_edit, saved_edits

    model = grown(arch)
    model.record_edit("d", steps=7)
    model.save_pretrained(tmp_path / "a")
    assert saved_edits(tmp_path / "a") == model.edits()
    assert remove_saved_edit(tmp_path / "a", "b", tmp_path / "b") == 2
    model.remove_edit("b")
    assert saved_edits(tmp_path / "b") == model.edits()
    loaded = PeftModel.from_pretrained(make_tiny(arch), tmp_path / "b")
    assert torch.equal(model_output(loaded, ids), model_output(model, ids))
    with pytest.raises(ValueError, match="fixes edit 'zz'; its edits are: 'a', 'c', 'd'"):
        remove_saved_edit(tmp_path / "b", "zz")


def test_cli_edits_list_and_remove(tmp_path, capsys):
    from peft_mpn.cli import main

    model = grown("bert")
    model.record_edit("a", languages=["en", "fr"], steps=4, seconds=0.25, time="2026-11-29T20:00:00+00:00")
    model.save_pretrained(tmp_path)
    assert main(["edits", "list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"4 edits in {tmp_path}"
    assert "a\tpatches=1\tlanguages=en,fr\tsteps=4\t0.250s\t2026-11-29T20:00:00+00:00\tfrozen" in out
    assert main(["edits", "remove", str(tmp_path), "a", "d"]) == 0
    assert "removed 2 edit(s), 2 patch(es); 2 edits left" in capsys.readouterr().out
    assert main(["edits", "list", str(tmp_path), "--json"]) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == ["b", "c"]
    assert main(["edits", "remove", str(tmp_path), "nope"]) == 2
    assert "no patch of the adapter" in capsys.readouterr().err
    assert main(["edits", "list", str(tmp_path / "missing")]) == 2
