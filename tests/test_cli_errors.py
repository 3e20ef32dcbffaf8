"""The CLI on user errors and faults: one line on stderr and exit code 2 (no traceback, unless --debug), checked
before any work; one writer per --output; the final adapter replaced atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from conftest import make_tiny, synthetic_texts, translate
from peft_mpn import MPNConfig, write_records
from peft_mpn.cli import main
from peft_mpn.utils.locks import directory_lock


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def edits(tmp_path):
    path = tmp_path / "edits.jsonl"
    write_records([{"id": "r0", "inputs": {"en": "w1 w2 w3"}, "label": 1}], path)
    return path


def edit(*extra: str) -> list[str]:
    # T-Patcher, without a memory unless one is given: these tests are about errors and saves, not the safe defaults
    memory = [] if "--memory" in extra else ["--no-memory"]
    return ["edit", "--languages", "en", "--method", "tpatcher", *memory, "--max-steps", "50", *extra]


def test_missing_or_unreadable_inputs_get_one_line(tmp_path, edits, capsys):
    out = str(tmp_path / "out")
    assert main(edit("--edits", str(tmp_path / "none.jsonl"), "--output", out)) == 2
    one_line_error(capsys, "--edits", "none.jsonl' does not exist")
    assert main(edit("--edits", str(edits), "--memory", str(tmp_path / "m.jsonl"), "--output", out)) == 2
    one_line_error(capsys, "--memory", "does not exist")
    assert main(edit("--edits", str(edits), "--model", str(tmp_path / "no-model"), "--output", out)) == 2
    one_line_error(capsys, "--model", "no-model' does not exist")  # not a hub lookup
    (tmp_path / "not-a-model").mkdir()
    assert main(edit("--edits", str(edits), "--model", str(tmp_path / "not-a-model"), "--output", out)) == 2
    one_line_error(capsys, "has no readable config.json")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_empty_stream_and_limit_zero_are_refused(tmp_path, edits, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(edit("--edits", str(empty), "--output", str(tmp_path / "o"))) == 2
    one_line_error(capsys, "holds no edit records")
    assert main(edit("--edits", str(edits), "--output", str(tmp_path / "o"), "--limit", "0")) == 2
    one_line_error(capsys, "--limit must be >= 1")


def test_output_checked_before_work(tmp_path, edits, capsys, monkeypatch):
    if os.geteuid() != 0:
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o500)
        assert main(edit("--edits", str(edits), "--output", str(readonly / "run"))) == 2
        one_line_error(capsys, "--output", "is not writable")
    from peft_mpn.utils import paths

    monkeypatch.setattr(paths.shutil, "disk_usage", lambda p: type("Usage", (), {"free": 10})())
    assert main(edit("--edits", str(edits), "--output", str(tmp_path / "full"))) == 2
    one_line_error(capsys, "--output", "free, but one checkpoint needs about")


def test_a_second_writer_on_one_output_is_refused(tmp_path, edits, capsys):
    with directory_lock(tmp_path / "run", "peft-mpn edit"):
        assert main(edit("--edits", str(edits), "--output", str(tmp_path / "run"))) == 2
    one_line_error(capsys, "is in use by pid", "peft-mpn edit")


def test_damaged_files_are_named(tmp_path, edits, capsys):
    model = get_peft_model(make_tiny("bert"), MPNConfig())
    model.add_patch()
    model.save_pretrained(tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    assert main(["evaluate", "--adapter", str(tmp_path / "adapter"), "--edits", str(edits)]) == 2
    one_line_error(capsys, str(weights), "does not match the checksum")
    assert main(["evaluate", "--adapter", "no-such-adapter", "--edits", str(edits)]) == 2
    one_line_error(capsys, "'no-such-adapter': the adapter directory does not exist")  # before any model loads
    (tmp_path / "adapter" / "adapter_config.json").write_text("{broken")
    assert main(["inspect", str(tmp_path / "adapter")]) == 2
    one_line_error(capsys, "adapter_config.json can't be read as JSON")
    (tmp_path / "results.json").write_text("[1,")
    assert main(["report", "--results", str(tmp_path / "results.json")]) == 2
    one_line_error(capsys, "results.json: not valid JSON")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--debug", *edit("--edits", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "o"))])


def test_final_adapter_save_is_atomic(classifier, tmp_path, capsys, monkeypatch):
    model, tokenizer = classifier()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    texts = [t for t, _ in synthetic_texts(4, seed=11)]
    with torch.no_grad():
        preds = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    records = [
        {"id": f"r{i}", "inputs": {"en": translate(t, "en")}, "label": 1 - p}
        for i, (t, p) in enumerate(zip(texts, preds))
    ]
    write_records(records, tmp_path / "edits.jsonl")
    run = [
        "--model",
        str(tmp_path / "base"),
        "--edits",
        str(tmp_path / "edits.jsonl"),
        "--output",
        str(tmp_path / "run"),
    ]
    assert main(edit(*run, "--limit", "2")) == 0
    capsys.readouterr()
    first = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()

    from peft_mpn.editing.baselines import PatchStrategy

    original = PatchStrategy.save

    def full_disk(self, directory):
        original(self, directory)  # the save is written...
        if Path(directory).name.startswith(".adapter.tmp-"):  # ...and fails in the final adapter save only
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(PatchStrategy, "save", full_disk)
    assert main(edit(*run)) == 2  # all 4 records: 2 resumed, 2 edited, then the final save fails
    assert capsys.readouterr().err.splitlines()[-1].startswith("peft-mpn edit: [Errno 28] No space left on device")
    monkeypatch.setattr(PatchStrategy, "save", original)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes() == first  # the earlier one
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary folder, no lock file
    assert main(edit(*run)) == 0  # the checkpoint holds all 4 edits: nothing is redone, the adapter is saved
    assert json.loads(capsys.readouterr().out)["records"] == 4
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes() != first
