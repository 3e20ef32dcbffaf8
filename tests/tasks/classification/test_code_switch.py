"""Code-switched training examples (``aliases`` + ``code_switch``): collator, editor, and transfer on a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model

from conftest import WORDS, synthetic_texts, translate
from peft_mpn import EditRecord, MPNConfig, MPNEditor, MultilingualEditCollator


# The first 20 words are "names": an alias table gives each one its form in the 'fr' and 'de' of the tiny model.
NAMES = WORDS[:20]
TABLE = {w: {"en": w, "fr": f"{w}_fr", "de": f"{w}_de"} for w in NAMES}


def memory_texts(n=300, seed=5):
    return [translate(t, lang) for t, _ in synthetic_texts(n // 2, seed) for lang in ("en", "fr")]


def test_collator_adds_code_switched_languages_inputs_and_negatives(classifier):
    _, tokenizer = classifier()
    collator = MultilingualEditCollator(tokenizer, ["en", "fr"], aliases=TABLE, code_switch=["de"], edit_repeat=1)
    assert collator.languages == ["en", "fr", "en>de"]
    record = EditRecord(
        id="r",
        inputs={"en": "w1 w30 good", "fr": "w1_fr w30_fr good_fr"},
        label=1,
        negatives={"en": ["w2 w30 good"]},
    )
    expanded = collator.expand(record)
    assert expanded.inputs["en>de"] == "w1_de w30 good"  # only the names change; the rest stays English
    assert expanded.negatives["en>de"] == ["w2_de w30 good"]
    assert "en>de" not in record.inputs  # the record passed in is not changed
    batch = collator.build(record, step=0)
    assert batch["languages"] == ["en", "fr", "en>de"]
    assert int(batch["edit_mask"].sum()) == 3 and len(batch["labels"]) == 3 + 2  # two negatives: en and en>de


def test_code_switched_copies_of_the_memory_join_it_unless_turned_off(classifier):
    _, tokenizer = classifier()
    memory = ["w1 w30 good", "w40 w41", "w2 w3 bad"]
    collator = MultilingualEditCollator(tokenizer, ["en"], memory, aliases=TABLE, code_switch=["fr", "de"])
    # the texts that name an entity get one copy each, the languages taken in turn; the rest is left alone
    assert collator.memory == [*memory, "w1_fr w30 good", "w2_de w3_de bad"]
    plain = MultilingualEditCollator(
        tokenizer, ["en"], memory, aliases=TABLE, code_switch=["fr"], code_switch_memory=False
    )
    assert plain.memory == memory


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"code_switch": ["de"]}, ValueError, "needs an alias table"),
        ({"aliases": TABLE, "code_switch": ["en"]}, ValueError, "drop 'en'"),
        ({"aliases": TABLE, "code_switch": ["ja"]}, ValueError, r"\['ja'\] have no name in the alias table"),
        ({"aliases": TABLE, "code_switch": "de"}, TypeError, "list of language codes"),
        ({"aliases": {"w1": {"fr": "w1_fr"}}, "code_switch": ["fr"]}, ValueError, "no English name"),
        ({"aliases": [("w1", "w1_fr")], "code_switch": ["fr"]}, TypeError, "alias table"),
    ],
)
def test_bad_code_switch_settings_get_clear_errors(classifier, kwargs, error, match):
    _, tokenizer = classifier()
    with pytest.raises(error, match=match):
        MultilingualEditCollator(tokenizer, ["en"], **kwargs)


def test_editor_trains_on_code_switched_examples_and_keeps_them_in_memory(classifier):
    model, tokenizer = classifier()
    editor = MPNEditor(
        get_peft_model(model, MPNConfig(task_type="SEQ_CLS")),
        tokenizer,
        languages=["en"],
        memory=memory_texts(),
        method="tpatcher",
        aliases=TABLE,
        code_switch=["fr"],
        progress=False,
    )
    assert editor.languages == ["en", "en>fr"]
    text = synthetic_texts(1, seed=7)[0][0]
    with torch.no_grad():
        label = 1 - int(editor.model(**tokenizer([text], return_tensors="pt")).logits.argmax(-1))
    before = editor.memory_size
    results = editor.edit_stream([{"id": "r", "inputs": {"en": text}, "label": label}])
    assert results[0].success and set(results[0].correct) == {"en", "en>fr"}
    assert editor.memory_size == before + 2  # the edit and its code-switched form join the memory
    # still one key, one bias and one value: saved, reloaded and merged exactly
    texts = [translate(t, lang) for t, _ in synthetic_texts(20, seed=3) for lang in ("en", "fr", "de")]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        edited = editor.model(**batch).logits
        assert editor.model.num_patches() == 1
        # a copy: merging rewrites the config's FFN width, which the fixture's models share
        merged = copy.deepcopy(editor.model).merge_and_unload()(**batch).logits
    torch.testing.assert_close(merged, edited, atol=1e-5, rtol=1e-5)


def _held_out_prediction(classifier, record, **kwargs):
    model, tokenizer = classifier()
    editor = MPNEditor(
        get_peft_model(model, MPNConfig(task_type="SEQ_CLS")),
        tokenizer,
        languages=["en"],
        memory=memory_texts(400),
        method="tpatcher",
        progress=False,
        **kwargs,
    )
    assert editor.edit(record).success
    with torch.no_grad():
        batch = tokenizer([record.inputs["de"]], return_tensors="pt")
        return int(editor.model(**batch).logits.argmax(-1))


def test_code_switched_names_make_edits_hold_in_a_language_no_sentence_was_trained_in(classifier):
    """T-Patcher on the English edit alone, then with its names also written in 'de' (aliases only: no 'de'
    sentence is ever trained on). The edit then holds in full 'de' translations where the default's does not.

    Here the names are in the evaluated language itself; the demo measures the stricter case of names in languages
    that are not evaluated at all (docs/benchmark.md).
    """
    model, tokenizer = classifier()
    default, switched = [], []
    for i, (text, _) in enumerate(synthetic_texts(60, seed=7)[:8]):
        with torch.no_grad():
            label = 1 - int(model(**tokenizer([text], return_tensors="pt")).logits.argmax(-1))
        record = EditRecord(id=f"r{i}", inputs={"en": text, "de": translate(text, "de")}, label=label)
        default.append(_held_out_prediction(classifier, record) == label)
        switched.append(_held_out_prediction(classifier, record, aliases=TABLE, code_switch=["de"]) == label)
    assert all(s for d, s in zip(default, switched) if d)  # nothing the default got right is lost
    assert sum(switched) >= sum(default) + 2  # measured: 3 of 8 against 0 of 8
