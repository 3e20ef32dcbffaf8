"""CausalLMEditor on tiny random LLaMA, GPT-2 and Qwen2: generation edits, locality, save/load, resume."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from conftest import LM_LANGS, lm_edit_records, lm_sentences, lm_translate, lm_word_tokenizer, make_tiny_lm
from peft_mpn import CausalLMEditor, EditConfig, GenerationEditRecord
from peft_mpn.editing.fastpath import FastPathUnsupported
from peft_mpn.tasks.generation.editor import assign_neurons, split_by_spelling


CONFIG = EditConfig(lr=3e-2)  # T-Patcher's 1e-2 works too, in about three times the steps


def make_editor(arch: str, languages=("en", "fr"), memory_size: int = 100, seed: int = 0, **kwargs):
    tokenizer = lm_word_tokenizer(bos=arch == "llama")  # GPT-2 and Qwen2 tokenizers add no BOS
    model = make_tiny_lm(arch, len(tokenizer), seed)
    memory = [lm_translate(s, lang) for s in lm_sentences(memory_size, seed=1) for lang in languages]
    kwargs.setdefault("config", CONFIG)
    editor = CausalLMEditor(model, tokenizer, list(languages), memory, progress=False, **kwargs)
    return editor, tokenizer


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_edit_changes_greedy_generation_keeps_unrelated_prompts_and_round_trips(arch, tmp_path):
    editor, tokenizer = make_editor(arch)
    assert editor.fast
    records = lm_edit_records(2, seed=3)
    unrelated = lm_sentences(30, seed=2)  # held out: not in the memory
    prompts = [r["prompt"][lang] for r in records for lang in ("en", "fr")]
    targets = [r["target"][lang].strip() for r in records for lang in ("en", "fr")]
    assert editor.generate(prompts, 2) != targets  # the base model says something else

    results = editor.edit_stream(records)
    for result in results:
        assert result.success and not result.skipped and result.neurons == 2  # both target tokens were wrong
        assert result.correct == {"en": True, "fr": True} and result.generated == {"en": True, "fr": True}
    assert editor.generate(prompts, 2) == targets  # both edits hold at the end of the stream
    assert editor.model.num_patches() == 2 and editor.model.num_frozen_patches() == 2

    locality = editor.locality(unrelated, max_new_tokens=8)
    assert locality["n_tokens"] == 240 and locality["agreement"] > 0.95, locality
    assert editor.locality([lm_translate(s, "fr") for s in unrelated])["agreement"] > 0.95

    editor.model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(make_tiny_lm(arch, len(tokenizer)), tmp_path)
    reloaded = CausalLMEditor(again, tokenizer, ["en", "fr"], progress=False)
    assert reloaded.generate(prompts, 2) == targets
    ids = torch.tensor([reloaded.collator.encode_record(GenerationEditRecord.from_dict(records[0]), "en").ids])
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, editor.model(input_ids=ids).logits, atol=1e-5)


def test_mpn_trains_translations_tpatcher_english_only():
    records = lm_edit_records(2, seed=4)
    mpn, _ = make_editor("llama", languages=("en", "fr"))
    tpatcher, _ = make_editor("llama", languages=("en", "fr"), method="tpatcher")
    assert tpatcher.languages == ["en"]
    after = {}
    for name, editor in (("mpn", mpn), ("tpatcher", tpatcher)):
        results = editor.edit_stream(records)
        assert all(r.success for r in results)
        after[name] = editor.evaluate(records)
    assert all(e["prompts"]["fr"]["generated"] for e in after["mpn"])  # fr is a training language of MPN
    assert set(after["mpn"][0]["prompts"]) == set(LM_LANGS)  # de is measured too: held out by both


def test_full_path_gives_the_fast_path_patch():
    record = lm_edit_records(1, seed=5)[0]
    fast, _ = make_editor("gpt2", memory_size=40)
    full, _ = make_editor("gpt2", memory_size=40, fast=False)
    assert fast.fast and not full.fast
    losses = fast.initial_losses(record), full.initial_losses(record)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    results = fast.edit(record), full.edit(record)
    assert results[0].success and results[1].success
    assert abs(results[0].steps - results[1].steps) <= 2
    key = [e.strategy.parts["key"].bank("default").frozen_weight for e in (fast, full)]
    assert torch.allclose(key[0], key[1], atol=1e-3)


def test_fast_path_that_disagrees_falls_back_or_raises():
    record = lm_edit_records(1, seed=6)[0]
    editor, _ = make_editor("gpt2", memory_size=20)
    editor.suffix.act = torch.tanh  # a wrong activation: the check against the full model must catch it
    assert editor.edit(record).success
    assert not editor.fast  # fell back to the full model
    strict, _ = make_editor("gpt2", memory_size=20, fast=True)
    strict.suffix.act = torch.tanh
    with pytest.raises(FastPathUnsupported, match="fast=False"):
        strict.edit(record)


def test_already_right_records_are_skipped_without_a_patch():
    editor, _ = make_editor("gpt2", memory_size=40)
    record = lm_edit_records(1, seed=7)[0]
    assert editor.edit(record).success
    again = editor.edit(record)
    assert again.skipped and again.success and again.steps == 0
    assert editor.model.num_patches() == 1
    assert editor.edit_stream([record])[0].skipped
    memory_before = editor.memory_size
    editor.edit_stream([record])
    assert editor.memory_size == memory_before  # a skipped record does not join the memory


def test_long_targets_share_neurons_in_runs():
    assert assign_neurons([0, 1, 2, 3, 4], 2) == [0, 0, 0, 1, 1]
    assert assign_neurons([2, 3], 5) == [0, 1]
    editor, _ = make_editor("llama", max_neurons=2)
    record = lm_edit_records(1, seed=8, target_words=4)[0]
    result = editor.edit(record)
    assert result.neurons == 2 and editor.model.peft_config["default"].patch_sizes == {"model.layers.1": [2]}
    assert result.success


def test_split_spellings_gives_each_first_token_its_own_neuron():
    assert split_by_spelling({"en": [0, 1], "fr": [0, 1]}, {"en": [7, 8], "fr": [9, 8]}, 5) == (
        {"en": [0, 2], "fr": [1, 2]},
        3,
    )
    assert split_by_spelling({"en": [0, 1], "fr": [0]}, {"en": [7, 8], "fr": [7]}, 5) == ({"en": [0, 1], "fr": [0]}, 2)
    many = {"en": [0, 1, 2], "fr": [0, 1, 2]}, {"en": [1, 2, 3], "fr": [4, 5, 6]}
    assert split_by_spelling(*many, 5) == (many[0], 3)  # 6 spellings > 5 neurons: as assigned
    record = lm_edit_records(1, seed=9)[0]
    record["target"]["fr"] = " E9 " + record["target"]["en"].split()[1]  # fr spells the first token differently
    for split, neurons in ((False, 2), (True, 3)):
        editor, _ = make_editor("llama", split_spellings=split)
        result = editor.edit(record)
        assert result.neurons == neurons and result.success and result.generated["fr"], (split, result)


def test_checkpoint_resume_continues_the_stream(tmp_path):
    records = lm_edit_records(3, seed=9)
    first, tokenizer = make_editor("gpt2", memory_size=40)
    done = first.edit_stream(records[:2], checkpoint_dir=tmp_path, checkpoint_every=1)
    resumed, _ = make_editor("gpt2", memory_size=40)
    results = resumed.edit_stream(records[:2] + records[2:], checkpoint_dir=tmp_path)
    assert [r.to_dict() for r in results[:2]] == [r.to_dict() for r in done]  # loaded, not redone
    assert results[2].success and resumed.model.num_patches() == 3
    assert resumed.memory_size == first.memory_size + 2  # the third edit joined the memory (en, fr)
    with pytest.raises(ValueError, match="another stream"):
        make_editor("gpt2", memory_size=40)[0].edit_stream(records[1:], checkpoint_dir=tmp_path)


def test_bad_input_says_what_to_fix():
    editor, tokenizer = make_editor("gpt2", memory_size=5)
    with pytest.raises(ValueError, match=r"training languages \['fr'\]"):
        editor.edit({"id": "x", "prompt": {"en": "v1 v2"}, "target": {"en": " E1"}})
    with pytest.raises(ValueError, match="read_records"):
        editor.edit({"id": "x", "inputs": {"en": "v1"}, "label": 1})
    model = make_tiny_lm("gpt2", len(tokenizer))
    with pytest.raises(ValueError, match="method must be one of"):
        CausalLMEditor(model, tokenizer, method="grace")
    with pytest.raises(ValueError, match="max_neurons"):
        CausalLMEditor(model, tokenizer, max_neurons=0)
    with pytest.raises(ValueError, match="memory_hard_k"):
        CausalLMEditor(model, tokenizer, memory_hard_k=0)
    with pytest.raises(TypeError, match="list of codes"):
        CausalLMEditor(model, tokenizer, languages="en")
    with pytest.raises(TypeError, match="list of texts"):
        editor.add_to_memory("one text")


def test_fitted_keys_start_on_every_training_language_and_can_stay_fixed():
    records = lm_edit_records(2, seed=5)
    for train_key in (False, True):
        editor, _ = make_editor("llama", key_init="fit", train_key=train_key)
        added, add_patch = [], editor.model.add_patch

        def spy(n, key=None, bias=None, added=added, add_patch=add_patch, **kwargs):
            added.append((key.clone(), bias.clone()))
            return add_patch(n, key=key, bias=bias, **kwargs)

        editor.model.add_patch = spy
        results = editor.edit_stream(records)
        assert all(r.success and r.generated["fr"] for r in results)
        key = next(iter(editor.model.patch_blocks("default").values()))["key"].bank("default")
        for (start, bias), weight, trained_bias in zip(added, key.weights, key.biases):
            assert bool((bias != 0).all())  # a fitted bias, not the input key's 0
            same = torch.allclose(weight.detach(), start) and torch.allclose(trained_bias.detach(), bias)
            assert same is not train_key  # frozen keys keep their fitted start, trained ones move
    for r in records:  # the fitted keys, trained from there, fire on the edit prompt in both training languages
        for lang in ("en", "fr"):
            ids = torch.tensor([editor.collator.text_ids(r["prompt"][lang])])
            with editor.model.capture_activations() as captured, torch.no_grad():
                editor.model(input_ids=ids)
            assert bool((next(iter(captured.values()))[0, -1] > 0).any()), (r["id"], lang)
    with pytest.raises(ValueError, match="key_init"):
        make_editor("llama", key_init="zero")
