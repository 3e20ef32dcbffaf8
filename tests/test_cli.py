"""The peft-mpn command line."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from conftest import make_tiny
from peft_mpn import MPNConfig, __version__, read_records, write_records
from peft_mpn.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"peft-mpn {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "examples:" in capsys.readouterr().out


def test_console_script_is_installed():
    beside_python = Path(sys.executable).with_name("peft-mpn")
    exe = str(beside_python) if beside_python.exists() else shutil.which("peft-mpn")
    assert exe, "pip install -e . should install the peft-mpn console script"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and __version__ in out.stdout


def test_inspect(tmp_path, capsys):
    model = get_peft_model(make_tiny("bert"), MPNConfig(languages=["en", "de"]))
    model.add_patch()
    model.add_patch()
    model.freeze_patches()
    model.save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patches"] == 2 and summary["frozen"] == 2 and summary["languages"] == ["en", "de"]
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err


# ---------------------------------------------------------------------- pipeline commands
def _saved_classifier(classifier, path):
    model, tokenizer = classifier()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def test_edit_and_evaluate_commands(classifier, tmp_path, capsys):
    from conftest import synthetic_texts, translate

    model, tokenizer = _saved_classifier(classifier, tmp_path / "base")
    texts = [t for t, _ in synthetic_texts(6, seed=11)]
    with torch.no_grad():
        preds = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    records = [
        {"id": f"r{i}", "inputs": {lang: translate(t, lang) for lang in ("en", "fr", "de")}, "label": 1 - p}
        for i, (t, p) in enumerate(zip(texts, preds))
    ]
    write_records(records, tmp_path / "edits.jsonl")
    memory = tmp_path / "memory.jsonl"
    memory.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in synthetic_texts(200, seed=5)))
    aliases = tmp_path / "aliases.json"
    aliases.write_text(json.dumps({f"w{i}": {"en": f"w{i}", "fr": f"w{i}_fr"} for i in range(20)}))

    code = main(
        [
            "edit",
            "--model",
            str(tmp_path / "base"),
            "--edits",
            str(tmp_path / "edits.jsonl"),
            "--languages",
            "en,fr,de",
            "--memory",
            str(memory),
            "--output",
            str(tmp_path / "run"),
            "--limit",
            "3",
            "--sharpness",
            "5",
            "--aliases",
            str(aliases),
            "--code-switch",
            "fr",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())["sharpness"] == 5.0
    assert summary["records"] == 3 and summary["success_rate"] == 1.0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["summary"] == summary

    code = main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "base"),
            "--adapter",
            str(tmp_path / "run" / "adapter"),
            "--edits",
            str(tmp_path / "edits.jsonl"),
            "--limit",
            "3",
        ]
    )
    assert code == 0
    assert "| MPN |" in capsys.readouterr().out  # the demo's table
    report = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert report["accuracy_before"]["en"] == 0.0  # every record was wrong before
    assert report["accuracy_after"]["en"] == 1.0
    evaluate = ["evaluate", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "run" / "adapter")]
    assert main([*evaluate, "--edits", str(tmp_path / "edits.jsonl"), "--languages", "en,ru"]) == 2
    assert "--languages ['ru']: no edit record has an input in them" in capsys.readouterr().err


def test_edit_loads_a_saved_classifier_with_its_own_labels(classifier, tmp_path, capsys):
    from peft_mpn.benchmark.classifier import MeanPoolingClassifier

    base, tokenizer = classifier()
    config = copy.deepcopy(base.config)
    config.num_labels, config.id2label, config.label2id = 3, {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    torch.manual_seed(0)
    MeanPoolingClassifier(config).save_pretrained(tmp_path / "three")
    tokenizer.save_pretrained(tmp_path / "three")
    write_records([{"id": "r0", "inputs": {"en": "w1 w2 w3"}, "label": 2}], tmp_path / "edits.jsonl")
    command = ["edit", "--model", str(tmp_path / "three"), "--edits", str(tmp_path / "edits.jsonl")]
    command += ["--languages", "en", "--method", "tpatcher", "--output", str(tmp_path / "run"), "--no-memory"]

    assert main(command) == 0  # 3 labels, as saved: no flag needed
    assert json.loads(capsys.readouterr().out)["success_rate"] == 1.0
    assert main([*command, "--num-labels", "2"]) == 2
    assert "Pass num_labels=3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*command, "--num-labels", "0"])
    assert "expected a whole number > 0" in capsys.readouterr().err


def test_commands_fail_cleanly(tmp_path, capsys):
    assert main(["edit", "--edits", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "inputs": {"en": "a"}, "label": 1, "colour": 2}\n')
    assert main(["edit", "--edits", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["edit", "--edits", "e.jsonl", "--output", "o", "--sharpness", "0"])
    assert "expected a number > 0" in capsys.readouterr().err
    assert main(["demo", "--output", str(tmp_path / "d"), "--patience", "-1", "--quiet"]) == 2
    assert "EditConfig.patience must be an int >= 0" in capsys.readouterr().err
    (tmp_path / "r.json").write_text("{}")
    assert main(["report", "--results", str(tmp_path / "r.json")]) == 2
    capsys.readouterr()
    assert main(["train-base", "--train", str(tmp_path / "r.json"), "--output", str(tmp_path)]) == 2
    assert "holds other files" in capsys.readouterr().err  # refused before training; nothing deleted
    assert main(["edit", "--edits", str(bad), "--output", str(tmp_path / "r.json")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["edit", "--edits", str(bad), "--output", str(tmp_path / "o"), "--limit", "-1"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    assert main(["edit", "--edits", str(bad), "--output", str(tmp_path / "o"), "--code-switch", "ja"]) == 2
    assert "--code-switch needs --aliases" in capsys.readouterr().err
    assert (tmp_path / "r.json").exists() and (tmp_path / "bad.jsonl").exists()


def test_build_benchmark_command(tmp_path, capsys):
    code = main(
        [
            "build-benchmark",
            "--output",
            str(tmp_path),
            "--languages",
            "en,fr",
            "--relations",
            "capital",
            "--max-countries",
            "10",
        ]
    )
    assert code == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["edit_records"] > 0
    records = read_records(tmp_path / "edits.jsonl")
    assert all(set(r.inputs) == {"en", "fr"} for r in records)
    first = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"text", "label", "lang"} and first["text"].startswith("query: ")


def test_demo_smoke_on_a_tiny_benchmark(tmp_path, capsys):
    """The whole experiment on the real e5 model, shrunk: 3 edits, 2 methods, a small benchmark."""
    code = main(
        [
            "demo",
            "--output",
            str(tmp_path / "demo"),
            "--relations",
            "capital",
            "--train-languages",
            "en,fr",
            "--heldout-languages",
            "ru,zh",
            "--max-countries",
            "30",
            "--n-edits",
            "3",
            "--memory-size",
            "60",
            "--methods",
            "tpatcher,mpn",
            "--base-train-layers",
            "0",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--patience",
            "7",
            "--code-switch",
            "ja,ko",
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| T-Patcher |" in out and "| MPN |" in out
    for name in ("report.md", "report.png", "results.json", "mpn-adapter/adapter_config.json"):
        assert (tmp_path / "demo" / name).exists(), name
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["methods"]) == {"T-Patcher", "MPN"}
    assert results["methods"]["MPN"]["SR"] == 1.0
    assert results["setup"]["config"]["edit"]["patience"] == 7
    assert results["setup"]["config"]["code_switch"] == ["ja", "ko"]
    assert results["setup"]["code_switch_evaluated"] == []  # Japanese and Korean names; neither is evaluated
    assert main(["report", "--results", str(tmp_path / "demo" / "results.json")]) == 0


def test_demo_code_switch_option_takes_auto_none_or_languages():
    from peft_mpn.cli import _code_switch_option

    assert _code_switch_option(["auto"]) is None and _code_switch_option(["none"]) == []
    assert _code_switch_option(["ja", "ko"]) == ["ja", "ko"]
    with pytest.raises(ValueError, match="not a mix"):
        _code_switch_option(["auto", "ja"])
