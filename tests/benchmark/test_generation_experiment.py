"""The generation experiment and `peft-mpn demo --task generation` on a tiny random causal LM (no download)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from conftest import make_tiny_lm
from peft_mpn.benchmark.generation import GenerationExperimentConfig, counterfactual_data, run_generation_experiment
from peft_mpn.cli import main
from peft_mpn.editing.baselines import BaselineConfig
from peft_mpn.editing.losses import EditConfig
from peft_mpn.tasks.generation.generate import batched_greedy, greedy_generate


LANGS = ["en", "fr", "de", "zh"]


def tiny_lm_dir(path, seed: int = 0):
    """A byte-level BPE tokenizer trained on the demo's texts and a tiny random LLaMA (conftest's), saved together."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    data = counterfactual_data("test", 40, LANGS)
    texts = [m["text"] for m in data.memory] + [p for r in data.records for p in r["prompt"].values()]
    texts += [t for r in data.records for t in r["target"].values()] + [u["prompt"] for u in data.unrelated]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<unk>", "<s>", "</s>"]  # the ids make_tiny_lm's config expects
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    make_tiny_lm("llama", len(tokenizer), seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = tiny_lm_dir(tmp_path_factory.mktemp("tiny-lm"))
    return path, tf.AutoModelForCausalLM.from_pretrained(path).eval(), tf.AutoTokenizer.from_pretrained(path)


def test_counterfactual_data_splits_countries_and_keeps_probes_apart():
    test, validation = counterfactual_data("test", 5), counterfactual_data("validation", 5)
    subjects = {r["meta"]["country"] for r in test.records}
    assert not subjects & {r["meta"]["country"] for r in validation.records}  # disjoint country splits
    assert set(test.records[0]["prompt"]) == {"en", "fr", "de", "es", "ru", "ar", "zh", "ja", "hi"}
    for record in test.records:
        assert record["target"]["en"].startswith(" ") and not record["target"]["zh"].startswith(" ")
        assert record["target"]["en"].strip() != record["meta"]["old"]
    prompts = {p for r in test.records for p in r["prompt"].values()}
    memory = " ".join(m["text"] for m in test.memory)
    assert not any(p in memory for p in prompts)  # edited subjects are not in the memory (train countries)
    assert test.neighbours and not any(n["prompt"] in prompts for n in test.neighbours)
    assert {u["lang"] for u in test.unrelated} == set(test.records[0]["prompt"])
    script_langs = {m["lang"] for m in test.script_memory}  # many scripts, none of them an evaluated language
    assert len(script_langs) > 20 and not script_langs & set(test.records[0]["prompt"])
    with pytest.raises(ValueError, match="train countries are the memory"):
        counterfactual_data("train", 2)
    with pytest.raises(ValueError, match="only"):
        counterfactual_data("validation", 500)


def test_batched_greedy_matches_greedy_generate(tiny_lm):
    _, model, tokenizer = tiny_lm
    prompts = [tokenizer(p)["input_ids"] for p in ("Country: France\nCapital:", "国家：巴林\n首都：", "Land: Kuba")]
    assert batched_greedy(model, prompts, 4, tokenizer.pad_token_id) == greedy_generate(model, prompts, 4)


def test_experiment_measures_final_models_against_the_original(tiny_lm, tmp_path):
    _, model, tokenizer = tiny_lm
    data = counterfactual_data("test", 2, LANGS)
    fast = {"lr": 1e-2, "max_steps": 50, "norm_constraint": 5e-2}
    config = GenerationExperimentConfig(
        methods=["tpatcher", "mpn", "ft", "lora"],
        train_languages=["en", "fr"],
        heldout_languages=["de", "zh"],
        edit=EditConfig(lr=3e-2),
        baselines={m: BaselineConfig.for_method(m, **fast) for m in ("ft", "lora")},
        n_examples=1,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = run_generation_experiment(config, data, model, tokenizer, tmp_path, log=lambda _: None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # every method edits a copy
    methods = results["methods"]
    assert list(methods) == ["T-Patcher", "MPN", "FT-L", "LoRA"]
    for label, m in methods.items():
        assert m["n_records"] == 2 and m["SR"] == 1.0, (label, m["results"])
        assert 0.0 <= m["ER"] <= 1.0 and set(m["GR"]) == {"en", "fr", "de", "zh"}
        assert m["locality"]["n"] == len(data.unrelated) and m["neighbourhood"]["n"] == len(data.neighbours)
        assert set(m["locality"]["per_language"]) == set(LANGS)
        assert m["target_logprob"]["en"]["after"] > m["target_logprob"]["en"]["before"]
        assert m["seconds_per_edit"]["n"] == m["n_edits"]
        for lang, entry in m["GR_any_spelling"].items():  # the strict check counts a subset of the lenient one
            assert entry["correct_all"] >= m["GR"][lang]["correct_all"]
    assert methods["MPN"]["GR"]["fr"]["all"] >= methods["T-Patcher"]["GR"]["fr"]["all"]  # fr: MPN trains on it
    assert methods["MPN"]["ER"] == 1.0 and methods["T-Patcher"]["ER"] == 1.0
    report = (tmp_path / "report.md").read_text()
    assert "| MPN |" in report and "## Greedy generations before and after the edits" in report
    assert "## GR with any language's spelling of the new target" in report
    assert (tmp_path / "generations.md").read_text().count("\n| ") == len(LANGS) + 1  # header + one row per language
    assert json.loads((tmp_path / "results.json").read_text())["examples"]["original"]


def test_demo_generation_smoke(tiny_lm, tmp_path, capsys):
    path, _, _ = tiny_lm
    out = tmp_path / "gen"
    argv = ["demo", "--task", "generation", "--model", str(path), "--output", str(out), "--n-edits", "1"]
    argv += ["--methods", "tpatcher,lora", "--train-languages", "en,fr", "--heldout-languages", "zh"]
    assert main([*argv, "--max-target-tokens", "50", "--patience", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| T-Patcher |" in printed and "| LoRA |" in printed and "| record | lang | target |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["setup"]["config"]["edit"]["patience"] == 3 and results["heldout_languages"] == ["zh"]
    assert main(["demo", "--task", "generation", "--methods", "grace", "--model", str(path), "--output", "x"]) == 2


def test_demo_generation_patch_layer_and_relations(tiny_lm, tmp_path, capsys):
    path, _, _ = tiny_lm
    out = tmp_path / "gen"
    argv = ["demo", "--task", "generation", "--model", str(path), "--output", str(out), "--n-edits", "1"]
    argv += ["--methods", "mpn", "--train-languages", "en,fr", "--heldout-languages", "zh", "--patch-layer", "-2"]
    argv += ["--relations", "capital,continent", "--max-target-tokens", "50", "--patience", "3", "--quiet"]
    assert main([*argv, "--no-script-memory"]) == 0  # the full model: the script memory would triple the time
    results = json.loads((out / "results.json").read_text())
    config = results["setup"]["config"]
    assert config["patch_layer"] == -2 and config["split_spellings"] is True
    mpn = results["methods"]["MPN"]
    assert mpn["fast_path"] is False  # layer 0 of 2: no fast path, the full model
    capital = counterfactual_data("test", 1, ["en", "fr", "zh"])
    both = counterfactual_data("test", 1, ["en", "fr", "zh"], relations=["capital", "continent"])
    assert both.records[0]["id"] == capital.records[0]["id"]  # the edit: the first relation
    assert mpn["neighbourhood"]["n"] == len(both.neighbours) > len(capital.neighbours)  # + the same country's
    with pytest.raises(ValueError, match="patch_layer must be in"):
        run_generation_experiment(
            GenerationExperimentConfig(methods=["mpn"], patch_layer=5), capital, *tiny_lm[1:], log=lambda _: None
        )


def test_code_switch_trains_tpatcher_and_mpn_on_names_of_languages_not_evaluated(tiny_lm, tmp_path):
    path, model, tokenizer = tiny_lm
    data = counterfactual_data("test", 1, LANGS, alias_languages=["ko"])
    subject = data.records[0]["meta"]["subject"]["en"]
    assert data.aliases[f"country:{data.records[0]['meta']['country']}"]["en"] == subject
    assert all(set(names) <= {"en", "ko"} for names in data.aliases.values())  # names only, of the asked languages
    config = GenerationExperimentConfig(
        methods=["tpatcher", "mpn", "lora"],
        train_languages=["en", "fr"],
        heldout_languages=["zh"],
        code_switch=["ko"],
        edit=EditConfig(lr=3e-2, max_steps=30),
        baselines={"lora": BaselineConfig.for_method("lora", max_steps=5)},
    )
    results = run_generation_experiment(config, data, model, tokenizer, log=lambda _: None)
    for label in ("T-Patcher", "MPN"):  # both patch methods train on the code-switched prompt ...
        assert "en>ko" in results["methods"][label]["results"][0]["correct"]
    assert "en>ko" not in results["methods"]["LoRA"]["results"][0]["correct"]  # ... the baselines do not
    assert results["setup"]["code_switch"] == ["ko"] and set(results["methods"]["MPN"]["GR"]) == {"en", "fr", "zh"}
    with pytest.raises(ValueError, match=r"lists evaluated languages \['zh'\]"):
        GenerationExperimentConfig(train_languages=["en"], heldout_languages=["zh"], code_switch=["zh"])
    with pytest.raises(ValueError, match="key_init must be 'input' or 'fit'"):
        GenerationExperimentConfig(key_init="random")
    out = tmp_path / "gen"
    argv = ["demo", "--task", "generation", "--model", str(path), "--output", str(out), "--n-edits", "1"]
    argv += ["--methods", "tpatcher", "--train-languages", "en,fr", "--heldout-languages", "zh", "--quiet"]
    assert main([*argv, "--max-target-tokens", "50", "--patience", "3", "--code-switch", "he,ko"]) == 0
    assert json.loads((out / "results.json").read_text())["setup"]["code_switch"] == ["he", "ko"]
    assert main([*argv, "--max-target-tokens", "50", "--patience", "3", "--code-switch", "auto"]) == 0
    assert json.loads((out / "results.json").read_text())["setup"]["code_switch"] == []  # chosen on validation
    assert json.loads((out / "results.json").read_text())["setup"]["script_memory"] > 100  # on by default
    assert (
        main([*argv, "--max-target-tokens", "50", "--patience", "3", "--no-script-memory", "--key-init", "fit"]) == 0
    )
    setup = json.loads((out / "results.json").read_text())["setup"]
    assert setup["script_memory"] == 0 and setup["config"]["key_init"] == "fit"


def test_demo_generation_defaults_on_the_builtin_model(tiny_lm, tmp_path, monkeypatch):
    """Without --model the demo edits the built-in LM in GEMMA_PATCH_LAYER with MPN on en, fr, ru, zh."""
    import peft_mpn.cli
    import peft_mpn.models

    _, model, tokenizer = tiny_lm
    monkeypatch.setattr(peft_mpn.models, "load_causal_lm", lambda: (model, tokenizer))
    monkeypatch.setattr(peft_mpn.cli, "GEMMA_PATCH_LAYER", -1)  # the tiny LM has 2 layers; Gemma 3 270M's is 12
    argv = ["demo", "--task", "generation", "--output", str(tmp_path), "--n-edits", "1", "--methods", "tpatcher"]
    assert main([*argv, "--max-target-tokens", "50", "--patience", "3", "--quiet"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["setup"]["config"]["patch_layer"] == -1 and results["setup"]["script_memory"] > 100
    assert results["train_languages"] == ["en", "fr", "ru", "zh"]
    assert results["heldout_languages"] == ["de", "es", "ar", "ja", "hi"]
