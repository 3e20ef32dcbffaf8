"""MultilingualEditCollator: language sampling, memory sampling, batches, Trainer collation and errors."""

from __future__ import annotations

import pytest
import torch

from conftest import LANGS, translate
from peft_mpn import EditConfig, EditRecord, MultilingualEditCollator
from peft_mpn.tasks.classification.collator import training_languages


TEXT = "w1 w2 good w3"
MEMORY = ["w4 w5", "w6 w7 w8 w9 w10", "w11_fr w12_fr", "w13_de", "w14 w15 w16"]
MANY = ["en", "fr", "de", "es", "it", "pt"]  # step_languages needs no tokenizer, so any codes do


@pytest.fixture
def tokenizer(classifier):
    return classifier()[1]


@pytest.fixture
def record():
    return EditRecord(id="r1", inputs={lang: translate(TEXT, lang) for lang in LANGS}, label=1)


# ---------------------------------------------------------------------- language sampling
def test_all_sampling_repeats_english_then_every_other_language(tokenizer):
    collator = MultilingualEditCollator(tokenizer, ["fr", "de"], edit_repeat=3)
    assert collator.languages == ["en", "fr", "de"]  # English always first
    for step in range(3):
        assert collator.step_languages(step) == ["en", "en", "en", "fr", "de"]


def test_english_only_collator_builds_transformer_patcher_batches(tokenizer):
    collator = MultilingualEditCollator(tokenizer)
    assert collator.languages == ["en"]
    assert collator.step_languages(5) == ["en"] * 8


def test_random_k_draws_k_languages_deterministically_per_step_and_seed(tokenizer):
    collator = MultilingualEditCollator(tokenizer, MANY, sampling="random_k", k=2, edit_repeat=2, seed=3)
    draws = [collator.step_languages(step) for step in range(20)]
    for languages in draws:
        assert languages[:2] == ["en", "en"]
        others = languages[2:]
        assert len(others) == 2 and len(set(others)) == 2 and "en" not in others
        assert others == sorted(others, key=MANY.index)  # kept in the collator's language order
    same = MultilingualEditCollator(tokenizer, MANY, sampling="random_k", k=2, edit_repeat=2, seed=3)
    assert [same.step_languages(step) for step in range(20)] == draws  # deterministic per (seed, step)
    assert len({tuple(d) for d in draws}) > 1  # varies across steps
    other_seed = MultilingualEditCollator(tokenizer, MANY, sampling="random_k", k=2, edit_repeat=2, seed=4)
    assert [other_seed.step_languages(step) for step in range(20)] != draws


def test_weighted_sampling_never_draws_a_zero_weight_language(tokenizer):
    weights = {"fr": 1.0, "de": 0.0, "es": 3.0, "it": 0.5, "pt": 0.0}
    collator = MultilingualEditCollator(tokenizer, MANY, sampling="weighted", k=2, weights=weights, edit_repeat=1)
    drawn = set()
    for step in range(100):
        others = collator.step_languages(step)[1:]
        assert len(others) == 2 and len(set(others)) == 2
        drawn.update(others)
    assert "de" not in drawn and "pt" not in drawn
    assert drawn == {"fr", "es", "it"}


def test_weighted_sampling_stops_when_only_zero_weights_are_left(tokenizer):
    collator = MultilingualEditCollator(
        tokenizer, ["fr", "de"], sampling="weighted", k=2, weights={"fr": 1.0, "de": 0.0}, edit_repeat=1
    )
    assert all(collator.step_languages(step) == ["en", "fr"] for step in range(10))


# ---------------------------------------------------------------------- memory sampling
def test_memory_indices_without_batch_size_take_the_whole_memory(tokenizer):
    collator = MultilingualEditCollator(tokenizer, memory=MEMORY)
    assert collator.memory_indices(0) == list(range(len(MEMORY)))
    assert collator.memory_indices(7, size=12) == list(range(12))


def test_memory_indices_with_batch_size(tokenizer):
    collator = MultilingualEditCollator(tokenizer, memory=[f"w{i}" for i in range(10)], memory_batch_size=3, seed=1)
    draws = [collator.memory_indices(step) for step in range(10)]
    for chosen in draws:
        assert len(chosen) == 3 and chosen == sorted(set(chosen)) and all(0 <= i < 10 for i in chosen)
    assert draws == [collator.memory_indices(step) for step in range(10)]  # deterministic
    assert len({tuple(d) for d in draws}) > 1  # varies across steps
    assert len(collator.memory_indices(0, size=100)) == 3  # an explicit size (the fast path's cached memory)
    assert collator.memory_indices(0, size=2) == [0, 1]  # a batch at least as large as the memory takes it all


# ---------------------------------------------------------------------- batches
def test_build_puts_edit_rows_first_then_memory(tokenizer, record):
    collator = MultilingualEditCollator(tokenizer, ["fr", "de"], memory=MEMORY, edit_repeat=3)
    batch = collator.build(record, step=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "edit_mask", "languages"}
    assert batch["languages"] == ["en", "en", "en", "fr", "de"]
    n_edit, n = 5, 5 + len(MEMORY)
    assert batch["input_ids"].shape[0] == n and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["labels"].tolist() == [1] * n_edit + [-100] * len(MEMORY)
    assert batch["edit_mask"].dtype == torch.bool
    assert batch["edit_mask"].tolist() == [True] * n_edit + [False] * len(MEMORY)
    expected = tokenizer([record.inputs[lang] for lang in batch["languages"]] + MEMORY, padding=True)
    assert batch["input_ids"].tolist() == expected["input_ids"]
    assert batch["attention_mask"].tolist() == expected["attention_mask"]


def test_build_with_memory_batch_size_takes_that_steps_memory(tokenizer, record):
    memory = [f"w{i} w{i + 1}" for i in range(10)]
    collator = MultilingualEditCollator(tokenizer, ["fr", "de"], memory=memory, edit_repeat=2, memory_batch_size=4)
    batch = collator.build(record, step=3)
    assert batch["input_ids"].shape[0] == 4 + 4
    chosen = [memory[i] for i in collator.memory_indices(3)]
    expected = tokenizer([record.inputs[lang] for lang in batch["languages"]] + chosen, padding=True)
    assert batch["input_ids"].tolist() == expected["input_ids"]
    assert batch["labels"][4:].tolist() == [-100] * 4


def test_build_without_memory_and_from_a_dict(tokenizer, record):
    collator = MultilingualEditCollator(tokenizer, ["fr"], edit_repeat=1)
    batch = collator.build(record.to_dict())
    assert batch["languages"] == ["en", "fr"]
    assert batch["labels"].tolist() == [1, 1] and batch["edit_mask"].all()


def test_build_truncates_to_max_length(tokenizer, record):
    collator = MultilingualEditCollator(tokenizer, memory=["w1 w2 w3 w4 w5 w6 w7 w8 w9"], edit_repeat=1, max_length=4)
    assert collator.build(record)["input_ids"].shape[1] == 4


def test_call_collates_one_trainer_feature(tokenizer, record):
    collator = MultilingualEditCollator(tokenizer, ["fr", "de"], memory=MEMORY, sampling="random_k", k=1)
    batch = collator([{"record": record, "step": 4}])
    expected = collator.build(record, 4)
    assert batch["languages"] == expected["languages"]
    for key in ("input_ids", "attention_mask", "labels", "edit_mask"):
        assert torch.equal(batch[key], expected[key])
    assert collator([{"record": record.to_dict()}])["languages"] == collator.build(record, 0)["languages"]


def test_call_with_two_features_names_the_batch_size(tokenizer, record):
    collator = MultilingualEditCollator(tokenizer, ["fr", "de"])
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        collator([{"record": record, "step": 0}, {"record": record, "step": 1}])


def test_for_edits_takes_repeat_memory_sample_and_seed_from_the_edit_config(tokenizer):
    config = EditConfig(edit_repeat=3, memory_batch_size=2, seed=5)
    collator = MultilingualEditCollator.for_edits(tokenizer, ["fr"], MEMORY, config, sampling="all", max_length=16)
    assert isinstance(collator, MultilingualEditCollator)
    assert (collator.edit_repeat, collator.memory_batch_size, collator.seed) == (3, 2, 5)
    assert collator.max_length == 16 and collator.memory == MEMORY and collator.languages == ["en", "fr"]


def test_training_languages_put_english_first_once():
    assert training_languages(["fr", "en", "de", "fr"]) == ["en", "fr", "de"]
    assert training_languages(["fr", "de"], english_only=True) == ["en"]
    with pytest.raises(TypeError, match=r"list of codes like \['en', 'fr'\], not the string 'fr'"):
        training_languages("fr", english_only=True)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampling": "some"}, "sampling must be"),
        ({"sampling": "random_k"}, "needs k"),
        ({"sampling": "random_k", "k": 0}, "needs k"),
        ({"sampling": "random_k", "k": 3}, "needs k"),
        ({"sampling": "weighted", "k": 1}, "needs weights"),
        ({"sampling": "weighted", "k": 1, "weights": {"fr": 1.0, "es": 1.0}}, "needs weights"),
        ({"sampling": "weighted", "k": 1, "weights": {"fr": -1.0}}, "needs weights"),
        ({"sampling": "weighted", "k": 1, "weights": {"en": 1.0}}, "needs weights"),
        ({"edit_repeat": 0}, "edit_repeat"),
    ],
)
def test_bad_arguments(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultilingualEditCollator(tokenizer, ["fr", "de"], **kwargs)
    with pytest.raises(TypeError, match="not the string"):
        MultilingualEditCollator(tokenizer, "fr")


def test_memory_must_be_a_list_of_texts(tokenizer):
    with pytest.raises(TypeError, match=r"not one string; wrap it: memory=\[text\]"):
        MultilingualEditCollator(tokenizer, ["en"], "hello world")
    with pytest.raises(TypeError, match=r"memory\[1\] must be a string"):
        MultilingualEditCollator(tokenizer, ["en"], ["w5", 3])
    assert MultilingualEditCollator(tokenizer, ["en"], ("w5", "w6")).memory == ["w5", "w6"]


def test_record_missing_a_training_language(tokenizer):
    collator = MultilingualEditCollator(tokenizer, ["fr", "de"])
    record = EditRecord(id="no-german", inputs={"en": TEXT, "fr": translate(TEXT, "fr")}, label=0)
    for call in (lambda: collator.build(record), lambda: collator([{"record": record}])):
        with pytest.raises(ValueError, match="no-german") as info:
            call()
        assert "'inputs'" in str(info.value) and "'de'" in str(info.value) and "'fr'" not in str(info.value)


def test_record_without_label(tokenizer):
    collator = MultilingualEditCollator(tokenizer)
    with pytest.raises(ValueError, match=r"'unlabelled'.*'label'"):
        collator.build(EditRecord(id="unlabelled", inputs={"en": TEXT}))


def test_invalid_dict_record_is_rejected_by_the_schema(tokenizer):
    collator = MultilingualEditCollator(tokenizer)
    with pytest.raises(ValueError, match=r"'bad'.*'colour'"):
        collator.build({"id": "bad", "inputs": {"en": TEXT}, "label": 0, "colour": "red"})


def test_negatives_of_every_training_language_join_the_memory_rows(tokenizer):
    negatives = {lang: [translate("w1 w2 w20 w3", lang)] for lang in LANGS}
    record = EditRecord(id="neg", inputs={lang: translate(TEXT, lang) for lang in LANGS}, label=1, negatives=negatives)
    collator = MultilingualEditCollator(tokenizer, ["en", "fr"], memory=MEMORY, edit_repeat=2, memory_batch_size=2)
    batch = collator.build(record, step=4)
    n_edit = int(batch["edit_mask"].sum())
    assert batch["input_ids"].shape[0] == n_edit + 2 + 2  # 2 sampled memory rows + en and fr negatives
    rows = tokenizer.batch_decode(batch["input_ids"][-2:], skip_special_tokens=True)
    assert [r.split() for r in rows] == [negatives["en"][0].split(), negatives["fr"][0].split()]
    assert (batch["labels"][n_edit:] == -100).all()
    assert record.negative_texts(["de"]) == negatives["de"]
