"""Saved adapters are verified before they load: checksum, safetensors only, finite values, complete tensors, and
every failure names the file. The pushed config and card carry no local path."""

from __future__ import annotations

import json
import os

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from conftest import make_tiny, model_output
from peft_mpn import MPNConfig
from peft_mpn.tuner.card import public_base_name


@pytest.fixture
def saved(tmp_path):
    """An adapter with two frozen patches and one trainable patch of two neurons, saved to tmp_path/a."""
    model = get_peft_model(make_tiny("bert"), MPNConfig(init_value_std=0.5))
    model.add_patch()
    model.add_patch()
    model.freeze_patches()
    model.add_patch(num_neurons=2)
    model.save_pretrained(tmp_path / "a")
    return tmp_path / "a", model


def weights_of(path):
    return path / "adapter_model.safetensors"


def rewrite(path, change):
    """Change the tensors of a saved adapter and record the new checksum, as a careful forger would."""
    tensors = load_file(weights_of(path))
    change(tensors)
    save_file(tensors, weights_of(path), metadata={"format": "pt"})
    config = json.loads((path / "adapter_config.json").read_text())
    config.pop("weights_sha256")
    (path / "adapter_config.json").write_text(json.dumps(config))


def test_checksum_is_written_and_a_clean_adapter_loads(saved, ids):
    path, model = saved
    config = json.loads((path / "adapter_config.json").read_text())
    assert len(config["weights_sha256"]) == 64
    again = PeftModel.from_pretrained(make_tiny("bert"), path)
    assert torch.allclose(model_output(again, ids), model_output(model, ids), atol=1e-6)
    base = make_tiny("bert")
    base.load_adapter(str(path))  # transformers' path is checked too
    assert torch.allclose(model_output(base, ids), model_output(model, ids), atol=1e-6)


@pytest.mark.parametrize("load", ["peft", "load_adapter", "transformers"])
def test_flipped_bytes_fail_the_checksum_naming_the_file(saved, load):
    path, _ = saved
    data = bytearray(weights_of(path).read_bytes())
    for i in range(len(data) - 100, len(data)):  # 100 bytes of tensor data
        data[i] ^= 0xFF
    weights_of(path).write_bytes(bytes(data))
    message = rf"{weights_of(path)} does not match the checksum recorded in .*adapter_config.json"
    with pytest.raises(ValueError, match=message):
        if load == "peft":
            PeftModel.from_pretrained(make_tiny("bert"), path)
        elif load == "load_adapter":
            model = get_peft_model(make_tiny("bert"), MPNConfig())
            model.load_adapter(str(path), adapter_name="other")
        else:
            make_tiny("bert").load_adapter(str(path))


def test_truncated_file_without_checksum_names_the_file(saved, caplog):
    path, _ = saved
    config = json.loads((path / "adapter_config.json").read_text())
    config.pop("weights_sha256")  # as an adapter saved by an older version
    (path / "adapter_config.json").write_text(json.dumps(config))
    weights_of(path).write_bytes(weights_of(path).read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"{weights_of(path)} can't be read .*truncated or damaged"):
        PeftModel.from_pretrained(make_tiny("bert"), path)
    assert "records no weights checksum" in caplog.text


def test_broken_config_names_the_file(saved):
    path, _ = saved
    (path / "adapter_config.json").write_text('{"peft_type": "MPN", ')
    for load in (lambda: PeftModel.from_pretrained(make_tiny("bert"), path), lambda: PeftConfig.from_pretrained(path)):
        with pytest.raises(ValueError, match=rf"{path / 'adapter_config.json'} can't be read as JSON"):
            load()


def test_missing_files_and_directories_are_not_hub_lookups(saved, tmp_path):
    path, _ = saved
    with pytest.raises(FileNotFoundError, match=rf"'{tmp_path / 'nowhere'}': the adapter directory does not exist"):
        PeftModel.from_pretrained(make_tiny("bert"), tmp_path / "nowhere")
    os.unlink(weights_of(path))
    with pytest.raises(FileNotFoundError, match=rf"no adapter_model.safetensors in '{path}'"):
        PeftModel.from_pretrained(make_tiny("bert"), path)


def test_a_pickled_adapter_is_refused(saved):
    path, _ = saved
    tensors = load_file(weights_of(path))
    os.unlink(weights_of(path))
    torch.save(tensors, path / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"adapter_model.bin is a pickled adapter; peft-mpn loads .*safetensors only"):
        PeftModel.from_pretrained(make_tiny("bert"), path)


def test_non_finite_values_are_refused(saved):
    path, _ = saved
    rewrite(path, lambda t: next(v for k, v in t.items() if k.endswith("frozen_weight")).fill_(torch.nan))
    with pytest.raises(ValueError, match=r"holds NaN or infinite values in .*frozen_weight"):
        PeftModel.from_pretrained(make_tiny("bert"), path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop(next(k for k in t if k.endswith("output.dense.mpn_patches.weights.0"))), "missing"),
        (lambda t: t.__setitem__(next(k for k in t if k.endswith("weights.0")).replace("0", "7"), torch.ones(1, 32)),
         "unexpected"),
        (lambda t: t.__setitem__("base_model.model.bert.pooler.dense.weight", torch.ones(2, 2)), "not an MPN patch"),
        (lambda t: [t.pop(k) for k in list(t) if ".output.dense." in k], "lacks the value tensors"),
        (lambda t: t.__setitem__(next(k for k in t if k.endswith("frozen_weight")), torch.ones(5, 32)), "rows"),
    ],
)  # fmt: skip
def test_missing_or_extra_tensors_are_errors(saved, change, message):
    path, _ = saved
    rewrite(path, change)
    with pytest.raises(ValueError, match=rf"{weights_of(path)}.*{message}"):
        PeftModel.from_pretrained(make_tiny("bert"), path)


def test_no_local_path_in_config_or_card(tmp_path):
    base_dir = tmp_path / "my-base"
    make_tiny("bert").save_pretrained(base_dir)
    base = type(make_tiny("bert")).from_pretrained(base_dir)
    model = get_peft_model(base, MPNConfig())
    model.add_patch()
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    recorded = config["base_model_name_or_path"]
    assert recorded.startswith("local:BertForSequenceClassification@sha256:") and len(recorded.split(":")[-1]) == 16
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert str(tmp_path) not in card and str(tmp_path) not in json.dumps(config)
    assert public_base_name(str(base_dir)) == recorded  # the same base gives the same fingerprint
    assert public_base_name("someone/model") == "someone/model"
    assert public_base_name(str(tmp_path / "gone" / "base")) == "local:base"
