"""The user's own path (issue 13): read position from the pooling, safe edit defaults, data -> report, quiet start."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers as tf

from conftest import synthetic_texts, translate
from peft_mpn import EditConfig, EditRecord, MPNEditor, read_records, write_records
from peft_mpn.benchmark.classifier import MeanPoolingClassifier
from peft_mpn.cli import build_parser, main
from peft_mpn.tasks.classification.negatives import mine_negatives
from peft_mpn.tasks.classification.reading import pooling_of, read_position


def _mean_pooled(classifier, pooling: str | None = None) -> torch.nn.Module:
    """The tiny trained classifier's encoder under a MeanPoolingClassifier head (``pooling`` in its config)."""
    bert, tokenizer = classifier()
    model = MeanPoolingClassifier(copy.deepcopy(bert.config))  # the fixture's config is shared: never mutate it
    model.bert.load_state_dict(bert.bert.state_dict(), strict=False)
    if pooling is not None:
        model.config.pooling = pooling
    return model.eval(), tokenizer


def _records(model, tokenizer, n: int, seed: int = 11) -> list[dict]:
    texts = [t for t, _ in synthetic_texts(n, seed=seed)]
    others = synthetic_texts(n, seed=seed + 1000)  # never edited: a neighbour that must keep its prediction
    with torch.no_grad():
        preds = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    return [
        {
            "id": f"r{i}",
            "inputs": {lang: translate(t, lang) for lang in ("en", "fr", "de")},
            "label": 1 - p,
            "neighbours": [{"inputs": {"en": others[i][0]}, "label": others[i][1]}],
        }
        for i, (t, p) in enumerate(zip(texts, preds))
    ]


def _save(model, tokenizer, path: Path, memory: int | None = 200) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if memory:
        rows = [{"text": t, "label": y} for t, y in synthetic_texts(memory, seed=5)]
        (path / "memory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------- 1. one source of truth for the read position
def test_read_position_follows_the_pooling(classifier):
    bert, _ = classifier()
    assert pooling_of(bert) == "cls" and read_position(bert) == "cls"
    mean, _ = _mean_pooled(classifier)
    assert pooling_of(mean) == "mean" and read_position(mean) == "all"
    cls, _ = _mean_pooled(classifier, "cls")
    assert read_position(cls) == "cls"
    assert read_position(mean, "all") == "all" and read_position(bert, "all") == "all"


def test_a_mismatch_that_lets_a_patch_fire_unseen_is_refused_with_the_fix(classifier):
    model, tokenizer = _mean_pooled(classifier)
    with pytest.raises(ValueError, match=r"mean-pools.*EditConfig\(position='all'\).*--pooling cls"):
        MPNEditor(model, tokenizer, languages=["en"], method="tpatcher", config=EditConfig(position="cls"))
    editor = MPNEditor(model, tokenizer, languages=["en"], method="tpatcher", progress=False)
    assert editor.config.position == "all"  # picked from the model, not from a flag
    cls_model, tokenizer = _mean_pooled(classifier, "cls")
    assert MPNEditor(cls_model, tokenizer, method="tpatcher", progress=False).config.position == "cls"


# ---------------------------------------------------------------------- 2. safe defaults
def test_edit_refuses_to_run_without_a_memory_unless_told(classifier, tmp_path, capsys):
    model, tokenizer = classifier()
    base = _save(model, tokenizer, tmp_path / "base", memory=None)
    write_records(_records(model, tokenizer, 3), tmp_path / "edits.jsonl")
    command = ["edit", "--model", str(base), "--edits", str(tmp_path / "edits.jsonl"), "--output", str(tmp_path / "r")]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "no memory" in err and "--memory FILE" in err and "--no-memory" in err
    assert not (tmp_path / "r" / "adapter").exists()
    assert main([*command, "--no-memory", "--negatives", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["memory"] == "none (opted out)"


def test_mpn_with_one_language_is_an_error_that_says_it_is_tpatcher(tmp_path, capsys):
    write_records([{"id": "a", "inputs": {"en": "w1 w2"}, "label": 1}], tmp_path / "edits.jsonl")
    command = ["edit", "--edits", str(tmp_path / "edits.jsonl"), "--output", str(tmp_path / "r"), "--no-memory"]
    assert main(command) == 2  # the records have English only: the default languages are ['en']
    assert "that is T-Patcher, not MPN" in capsys.readouterr().err
    assert main([*command, "--languages", "en"]) == 2
    assert "--method tpatcher" in capsys.readouterr().err


def test_every_option_shows_its_default():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        text = sub.format_help()
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.default is argparse.SUPPRESS:
                continue
            shown = formatter._get_help_string(action) if action.help else ""
            assert "default" in shown or "required" in shown, (name, action.option_strings)
        assert name == "inspect" or "(default:" in text, name


def test_mined_negatives_are_the_nearest_pool_texts(classifier):
    model, tokenizer = classifier()
    record = EditRecord(
        id="x", inputs={"en": "w1 w2 w3 w4 w5 w6", "fr": translate("w1 w2 w3 w4 w5 w6", "fr")}, label=1
    )
    pool = [t for t, _ in synthetic_texts(40, seed=3)] + [record.inputs["en"]]  # its own text: never a negative

    # reference: the last FFN's input at [CLS], centred by the pool mean, ranked by cosine
    captured = []
    hook = model.bert.encoder.layer[-1].intermediate.dense.register_forward_hook(
        lambda module, args, out: captured.append(args[0][:, 0])
    )
    with torch.no_grad():
        model(**tokenizer(pool, padding=True, return_tensors="pt"))
        model(**tokenizer([record.inputs["en"]], return_tensors="pt"))
    hook.remove()
    vectors, query = captured
    centre = vectors.mean(0)
    scores = torch.nn.functional.cosine_similarity(vectors - centre, query - centre)
    expected = [pool[i] for i in scores.argsort(descending=True).tolist() if pool[i] != record.inputs["en"]][:3]

    mined = mine_negatives(model, tokenizer, [record], pool, k=3, languages=["en"])
    assert mined[0].negatives["en"] == expected
    assert "fr" not in mined[0].negatives and record.negatives == {}  # only the asked languages; input untouched
    carried = EditRecord(id="y", inputs={"en": "w3"}, label=1, negatives={"en": ["mine"]})
    assert mine_negatives(model, tokenizer, [carried], pool, k=2)[0].negatives == {"en": ["mine"]}
    assert mine_negatives(model, tokenizer, [record], pool, k=0)[0].negatives == {}
    with pytest.raises(ValueError, match="k must be an int >= 0"):
        mine_negatives(model, tokenizer, [record], pool, k=-1)


# ---------------------------------------------------------------------- 3. data -> report
def test_edit_evaluate_report_gives_the_demos_table_and_plot(classifier, tmp_path, capsys):
    model, tokenizer = classifier()
    base = _save(model, tokenizer, tmp_path / "base")
    write_records(_records(model, tokenizer, 4), tmp_path / "edits.jsonl")
    locality = [{"text": t, "label": y} for t, y in synthetic_texts(40, seed=8)]
    (tmp_path / "unrelated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in locality))
    run = tmp_path / "run"
    edit = ["edit", "--model", str(base), "--edits", str(tmp_path / "edits.jsonl"), "--output", str(run)]
    assert main([*edit, "--languages", "en,fr", "--sharpness", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["position"] == "cls" and summary["memory"].startswith("memory.jsonl of the base")
    assert summary["negatives_per_language"] == 3
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["languages"] == ["en", "fr"] and config["method"] == "mpn" and config["edits"] == 4
    assert config["metrics"]["SR"] == 1.0 and "seconds per edit" in config["metrics"]
    assert config["base_model_name_or_path"].startswith("local:")  # a name and a hash, not the path
    assert str(tmp_path) not in (run / "adapter" / "adapter_config.json").read_text()
    card = (run / "adapter" / "README.md").read_text()
    assert "**Editing method:** MPN" in card and "**Edits:** 4" in card and str(tmp_path) not in card

    # report accepts edit's results.json: SR and seconds, with a note naming evaluate
    assert main(["report", "--results", str(run / "results.json")]) == 0
    captured = capsys.readouterr()
    assert "| MPN | 1.000 |" in captured.out and "peft-mpn evaluate" in captured.err
    assert "summary" in json.loads((run / "results.json").read_text())  # not overwritten

    evaluate = ["evaluate", "--model", str(base), "--adapter", str(run / "adapter")]
    assert (
        main([*evaluate, "--edits", str(tmp_path / "edits.jsonl"), "--locality", str(tmp_path / "unrelated.jsonl")])
        == 0
    )
    out = capsys.readouterr().out
    assert "| Method | SR | ER | GR en | GR fr | GR de* |" in out and "Locality raw" in out
    evaluation = json.loads((run / "evaluation.json").read_text())
    mpn = evaluation["methods"]["MPN"]
    assert evaluation["train_languages"] == ["en", "fr"] and evaluation["heldout_languages"] == ["de"]
    assert mpn["SR"] == 1.0 and mpn["ER"] == 1.0 and mpn["GR"]["fr"]["n_all"] == 4
    assert mpn["locality"]["n"] == 40 and mpn["neighbourhood"]["n"] > 0
    assert mpn["seconds_per_edit"]["n"] == 4

    assert main(["report", "--results", str(run / "evaluation.json")]) == 0
    assert "| MPN |" in capsys.readouterr().out
    assert (run / "report.png").stat().st_size > 10_000 and "Neighbourhood" in (run / "report.md").read_text()
    # edit's results.json now reports through the evaluation beside it
    assert main(["report", "--results", str(run / "results.json"), "--output", str(tmp_path / "rep")]) == 0
    assert "Locality" in capsys.readouterr().out

    (tmp_path / "other.json").write_text('{"accuracy": 1}')
    assert main(["report", "--results", str(tmp_path / "other.json")]) == 2
    assert "pass the results.json of `peft-mpn edit`" in capsys.readouterr().err


def test_train_base_saves_the_memory_and_pooling_edit_uses(classifier, tmp_path, capsys):
    model, tokenizer = _mean_pooled(classifier)
    start = _save(model, tokenizer, tmp_path / "start", memory=None)
    rows = [{"text": t, "label": y, "lang": "en"} for t, y in synthetic_texts(40, seed=2)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    command = ["train-base", "--train", str(tmp_path / "train.jsonl"), "--model", str(start), "--epochs", "1"]
    assert main([*command, "--output", str(tmp_path / "base"), "--train-layers", "0"]) == 0
    capsys.readouterr()
    memory = [json.loads(line) for line in (tmp_path / "base" / "memory.jsonl").read_text().splitlines()]
    assert memory == rows
    info = json.loads((tmp_path / "base" / "peft_mpn_base.json").read_text())
    assert info["pooling"] == "cls" and info["train_languages"] == ["en"] and info["train_examples"] == 40
    assert json.loads((tmp_path / "base" / "config.json").read_text())["pooling"] == "cls"
    assert main([*command, "--output", str(tmp_path / "mean"), "--train-layers", "0", "--pooling", "mean"]) == 0
    capsys.readouterr()
    write_records(_records(*_mean_pooled(classifier), 2), tmp_path / "edits.jsonl")
    edit = ["edit", "--edits", str(tmp_path / "edits.jsonl"), "--method", "tpatcher", "--negatives", "1"]
    assert main([*edit, "--model", str(tmp_path / "mean"), "--output", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pooling"] == "mean" and summary["position"] == "all"
    assert summary["memory"] == "memory.jsonl of the base (40 training texts)"


# ---------------------------------------------------------------------- 7. fast, quiet start
def test_help_is_fast_and_import_is_lazy():
    code = "import sys, peft_mpn.cli; print('torch' in sys.modules, 'peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "peft_mpn.cli", "--help"], capture_output=True, timeout=120)
    assert out.returncode == 0 and time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "code",
    [
        "import peft_mpn\nfrom peft import mapping",  # peft imported after peft_mpn: registered when it loads
        "from peft import mapping\nimport peft_mpn",  # peft first: registered at import
        "from peft_mpn.tuner.config import MPNConfig\nfrom peft import mapping",  # any tuner module registers
    ],
)
def test_mpn_is_registered_whatever_the_import_order(code):
    check = code + "\nprint(any(str(k) == 'MPN' for k in mapping.PEFT_TYPE_TO_TUNER_MAPPING))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_loading_a_new_head_is_quiet_but_other_reports_are_not(classifier, tmp_path, caplog):
    from peft_mpn.utils.loading import quiet_new_head

    bert, tokenizer = classifier()
    bert.bert.save_pretrained(tmp_path / "encoder")  # no head: the head is new, as for the default model
    tf.utils.logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"), quiet_new_head():
            tf.BertForSequenceClassification.from_pretrained(tmp_path / "encoder")
        assert "LOAD REPORT" not in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING"), quiet_new_head(prefixes=("score.",)):  # the classifier is not expected here
            tf.BertForSequenceClassification.from_pretrained(tmp_path / "encoder")
        assert "LOAD REPORT" in caplog.text
    finally:
        tf.utils.logging.disable_propagation()


# ---------------------------------------------------------------------- 5. reload gives the same outputs
def test_default_classifier_is_the_same_on_every_call_and_reload_keeps_every_edit(tmp_path):
    from peft import PeftModel

    from peft_mpn.benchmark.classifier import load_classifier_any, predict
    from peft_mpn.models import load_classifier, load_tokenizer

    a, b = load_classifier(), load_classifier()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    model = load_classifier_any(None)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    tokenizer = load_tokenizer(None)
    texts = ["query: The capital of France is Paris.", "query: The capital of Peru is Lima."]
    with torch.no_grad():
        before = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    records = [{"id": f"e{i}", "inputs": {"en": t}, "label": 1 - p} for i, (t, p) in enumerate(zip(texts, before))]
    editor = MPNEditor(model, tokenizer, method="tpatcher", memory=["query: Water is wet."], progress=False)
    assert all(r.success for r in editor.edit_stream(records))
    editor.model.save_pretrained(tmp_path / "adapter")
    edited = predict(editor.model, tokenizer, texts)
    again = PeftModel.from_pretrained(load_classifier_any(None), tmp_path / "adapter").eval()
    assert predict(again, tokenizer, texts) == edited == [1 - p for p in before]
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        assert torch.allclose(again(**batch).logits, editor.model(**batch).logits, atol=1e-5)


def test_records_read_back_with_mined_negatives(classifier, tmp_path):
    model, tokenizer = classifier()
    records = [EditRecord.from_dict(r) for r in _records(model, tokenizer, 2)]
    mined = mine_negatives(model, tokenizer, records, [t for t, _ in synthetic_texts(20, seed=4)], k=2)
    write_records(mined, tmp_path / "mined.jsonl")
    assert [r.negatives for r in read_records(tmp_path / "mined.jsonl")] == [r.negatives for r in mined]
    assert all(len(r.negatives[lang]) == 2 for r in mined for lang in ("en", "fr", "de"))
