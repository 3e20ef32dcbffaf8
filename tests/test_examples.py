"""Every script in examples/ runs (CI smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(script), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_edit_causal_lm_on_a_saved_model_with_its_own_edits(tmp_path):
    """The causal-LM example loads a model and tokenizer by path, as it would a hub id, and edits from a JSONL."""
    from conftest import lm_edit_records, lm_sentences, lm_translate, lm_word_tokenizer, make_tiny_lm
    from peft_mpn import write_generation_records

    tokenizer = lm_word_tokenizer(bos=False)  # GPT-2 style: no BOS
    make_tiny_lm("gpt2", len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    write_generation_records(lm_edit_records(2, seed=21), tmp_path / "edits.jsonl")
    memory = [lm_translate(s, lang) for s in lm_sentences(40, seed=22) for lang in ("en", "fr")]
    (tmp_path / "memory.txt").write_text("\n".join(memory) + "\n", encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "edit_causal_lm.py"),
            "--model",
            str(tmp_path / "model"),
            "--edits",
            str(tmp_path / "edits.jsonl"),
            "--memory",
            str(tmp_path / "memory.txt"),
            "--languages",
            "en,fr",
            "--script-memory",
            "--output",
            str(tmp_path / "adapter"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("success=True") == 2 and "[fr, train]" in out and "[de, held-out]" in out
    assert "efficacy (greedy generation, en): 1.00" in out
    assert "same generations: True" in out
    assert "memory: 220 texts" in out  # 80 from memory.txt, 140 from --script-memory (35 languages, none edited)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["peft_type"] == "MPN" and config["languages"] == ["en", "fr"]
    assert config["patch_sizes"] == {"transformer.h.1": [2, 2]}
