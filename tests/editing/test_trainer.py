"""MPNTrainer (the full-model path): what it trains, TrainingArguments, early stopping, losses and optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model
from transformers import TrainerControl

from conftest import LANGS, make_tiny, synthetic_texts, translate
from peft_mpn import EditConfig, EditRecord, MPNConfig, MPNEditor, MPNTrainer, MultilingualEditCollator
from peft_mpn.editing.optim import build_optimizer
from peft_mpn.editing.stopping import PatchEarlyStopping, StepStats
from peft_mpn.editing.trainer import edit_training_args, full_model_step, newest_patch, trainable_edit_parameters


MEMORY = [translate(t, lang) for t, _ in synthetic_texts(8, seed=5) for lang in LANGS]


def predict(model, tokenizer, text):
    with torch.no_grad():
        return int(model(**tokenizer([text], return_tensors="pt")).logits.argmax(-1))


def ffn_input(model, text, tokenizer):
    """The [CLS] input of the patched FFN block for ``text``."""
    key = next(iter(model.patch_blocks().values()))["key"]
    captured = []
    handle = key.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            model(**tokenizer([text], return_tensors="pt"))
    finally:
        handle.remove()
    return captured[0][0, 0]


def add_patch_like_the_editor(model, text, tokenizer, seed=0):
    """A patch whose key gives pre-activation 1 on ``text`` and a small random value (as PatchStrategy.begin)."""
    h = ffn_input(model, text, tokenizer)
    width = next(iter(model.patch_blocks().values()))["value"].out_features
    value = torch.randn(width, generator=torch.Generator().manual_seed(seed)) / width**0.5
    model.add_patch(key=h / h.norm() ** 2, bias=0.0, value=value)


def patched_classifier(classifier, text, frozen_text=None):
    """The tiny classifier with an MPN adapter: an older frozen patch (optional) and a new one for ``text``."""
    model, tokenizer = classifier()
    model = get_peft_model(model, MPNConfig(task_type="SEQ_CLS"))
    if frozen_text is not None:
        add_patch_like_the_editor(model, frozen_text, tokenizer, seed=1)
        model.freeze_patches()
    add_patch_like_the_editor(model, text, tokenizer)
    return model, tokenizer


def record_for(text, label, rid="r1"):
    return EditRecord(id=rid, inputs={lang: translate(text, lang) for lang in LANGS}, label=label)


TEXT, OLD_TEXT = synthetic_texts(1, seed=7)[0][0], synthetic_texts(1, seed=3)[0][0]


# ---------------------------------------------------------------------- MPNTrainer.for_record
def test_trains_only_the_newest_patch_and_respects_training_arguments(classifier, tmp_path):
    model, tokenizer = patched_classifier(classifier, TEXT, frozen_text=OLD_TEXT)
    record = record_for(TEXT, 1 - predict(model, tokenizer, TEXT))
    collator = MultilingualEditCollator(tokenizer, LANGS, MEMORY, edit_repeat=4)
    config = EditConfig(stop_rule="memory_plateau", patience=10_000, value_lr_scale=5.0)  # runs every step
    args = edit_training_args(str(tmp_path), config, max_steps=6, learning_rate=3e-3, logging_steps=2)
    assert args.report_to == [] and args.per_device_train_batch_size == 1

    key_bank = next(iter(model.patch_blocks().values()))["key"].bank("default")
    value_bank = next(iter(model.patch_blocks().values()))["value"].bank("default")
    trained = [key_bank.weights[-1], key_bank.biases[-1], value_bank.weights[-1]]
    before_trained = [p.detach().clone() for p in trained]
    frozen = {
        "key": key_bank.frozen_weight.clone(),
        "bias": key_bank.frozen_bias.clone(),
        "value": value_bank.frozen_weight.clone(),
    }
    base = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "mpn_patches" not in n}

    trainer = MPNTrainer.for_record(model, record, collator, str(tmp_path), config, args=args)
    assert len(trainer.train_dataset) == 6 and trainer.train_dataset[3] == {"record": record, "step": 3}
    trainer.train()

    assert trainer.state.global_step == 6 and len(trainer.history) == 6
    losses = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in losses] == [2, 4, 6]
    assert all(entry["learning_rate"] == pytest.approx(3e-3) for entry in losses)  # constant schedule
    groups = trainer.optimizer.param_groups
    assert sorted(g["lr"] for g in groups) == pytest.approx(sorted([3e-3, 3e-3, 3e-3 * 5.0]))

    for old, new in zip(before_trained, trained):
        assert not torch.equal(old, new.detach())  # the newest patch trained
    assert torch.equal(key_bank.frozen_weight, frozen["key"]) and torch.equal(key_bank.frozen_bias, frozen["bias"])
    assert torch.equal(value_bank.frozen_weight, frozen["value"])
    assert int(key_bank.num_frozen) == 1 and key_bank.num_patches == 2
    for name, p in model.get_base_model().named_parameters():
        if "mpn_patches" not in name:
            assert torch.equal(p, base[name]), name
    assert not model.training  # compute_loss keeps dropout off


def test_default_training_arguments_come_from_the_edit_config(classifier, tmp_path):
    model, tokenizer = patched_classifier(classifier, TEXT)
    collator = MultilingualEditCollator(tokenizer, LANGS)
    config = EditConfig(max_steps=3, lr=0.02, weight_decay=0.1, max_grad_norm=2.0, seed=4)
    trainer = MPNTrainer.for_record(model, record_for(TEXT, 0), collator, str(tmp_path), config)
    args = trainer.args
    assert (args.max_steps, args.learning_rate, args.weight_decay, args.max_grad_norm) == (3, 0.02, 0.1, 2.0)
    assert args.seed == 4
    assert args.report_to == [] and args.save_strategy == "no" and len(trainer.train_dataset) == 3
    assert trainer.edit_config is config and trainer.stopper.config is config


def test_stops_early_when_the_edit_is_easy(classifier, tmp_path):
    model, tokenizer = patched_classifier(classifier, TEXT)
    record = record_for(TEXT, predict(model, tokenizer, TEXT))  # already right; the patch fires on it (act 1)
    collator = MultilingualEditCollator(tokenizer, LANGS)  # no memory: nothing for the patch to stay silent on
    config = EditConfig(max_steps=20)
    trainer = MPNTrainer.for_record(model, record, collator, str(tmp_path), config)
    trainer.train()
    assert trainer.state.global_step < config.max_steps
    assert trainer.stopper.done and trainer.stopper.last.edit_correct
    assert trainer.stopper.last.activation_edit > 0 and math.isnan(trainer.stopper.last.activation_memory)


# ---------------------------------------------------------------------- full_model_step
def test_full_model_step_matches_the_editors_initial_losses(classifier, tmp_path):
    model, tokenizer = classifier()
    model = get_peft_model(model, MPNConfig(task_type="SEQ_CLS"))
    editor = MPNEditor(model, tokenizer, languages=LANGS, memory=MEMORY, fast=False, progress=False)
    record = record_for(TEXT, 1 - predict(model, tokenizer, TEXT))
    expected = editor.initial_losses(record)
    assert model.num_patches() == 0  # initial_losses leaves the model unchanged

    editor.strategy.begin(record.id, ffn_input(model, record.inputs["en"], tokenizer), editor.config)
    batch = editor.collator.build(record, 0)
    with torch.no_grad():
        parts, stats, outputs = full_model_step(model, batch, editor.config)
    got = parts.as_floats()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-5), name
    assert stats.losses == got and not stats.edit_correct
    with torch.no_grad(), model.capture_activations() as acts:
        model(**tokenizer([record.inputs["en"]], return_tensors="pt"))
    english = float(next(iter(acts.values()))[0, 0, -1])
    assert english == pytest.approx(1.0, abs=1e-4)  # the key init: pre-activation 1 on the English edit
    assert stats.activation_edit <= english + 1e-5  # the smallest over English and its translations
    assert outputs.logits.shape == (batch["input_ids"].shape[0], 2)

    # the trainer's first step is the same step
    trainer = MPNTrainer.for_record(
        model,
        record,
        editor.collator,
        str(tmp_path),
        editor.config,
        args=edit_training_args(str(tmp_path), editor.config, max_steps=1),
    )
    trainer.train()
    for name, value in expected.items():
        assert trainer.history[0][name] == pytest.approx(value, abs=1e-5), name

    # and the fast path agrees
    fast_model = get_peft_model(classifier()[0], MPNConfig(task_type="SEQ_CLS"))
    fast = MPNEditor(fast_model, tokenizer, languages=LANGS, memory=MEMORY, fast=True, progress=False)
    for name, value in fast.initial_losses(record).items():
        assert value == pytest.approx(expected[name], abs=1e-5), name


def test_full_model_step_without_patch_is_the_edit_loss(classifier):
    model, tokenizer = classifier()
    collator = MultilingualEditCollator(tokenizer, LANGS, MEMORY, edit_repeat=2)
    batch = collator.build(record_for(TEXT, 0), 0)
    with torch.no_grad():
        parts, stats, _ = full_model_step(model, batch, EditConfig())
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:4]
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert parts.total.item() == pytest.approx(expected.item(), abs=1e-6)
    assert parts.activation.item() == 0.0 and parts.memory.item() == 0.0
    assert math.isnan(stats.activation_edit) and math.isnan(stats.activation_memory)


# ---------------------------------------------------------------------- PatchEarlyStopping
def stats(correct=True, edit=0.5, memory=-0.5, memory_loss=1.0):
    return StepStats(correct, edit, memory, {"memory": memory_loss})


def test_activation_gap_stops_once_the_edit_is_right_and_separated():
    stopper = PatchEarlyStopping(EditConfig(stop_rule="activation_gap", patience=100))
    assert not stopper.done  # nothing observed yet
    assert stopper.observe(stats(correct=True, edit=0.5, memory=-3.5))
    assert not stopper.observe(stats(correct=False, edit=0.5, memory=-3.5))  # the edit must be right
    assert not stopper.observe(stats(correct=True, edit=-0.1, memory=-3.5))  # edit not active
    assert not stopper.observe(stats(correct=True, edit=0.5, memory=-0.5))  # memory above the threshold (-3)
    assert stopper.observe(stats(correct=True, edit=0.5, memory=float("nan")))  # no memory
    assert stopper.observe(stats(correct=True, edit=float("nan"), memory=float("nan")))  # no patch (baselines)


def test_activation_gap_also_stops_at_the_plateau():
    stopper = PatchEarlyStopping(EditConfig(stop_rule="activation_gap", patience=2))
    results = [stopper.observe(stats(edit=0.5, memory=0.9, memory_loss=1.0)) for _ in range(3)]
    assert results == [False, False, True]


def test_memory_plateau_waits_for_patience_steps_without_improvement():
    stopper = PatchEarlyStopping(EditConfig(stop_rule="memory_plateau", patience=3))
    # separation alone is not enough for this rule
    assert not stopper.observe(stats(edit=5.0, memory=-5.0, memory_loss=1.0))  # first right step: best = 1.0
    assert not stopper.observe(stats(memory_loss=0.5))  # improved: stale 0
    assert stopper.best_memory == 0.5 and stopper.stale == 0
    assert not stopper.observe(stats(memory_loss=0.4999))  # below the 0.1% / 1e-4 tolerance: stale 1
    assert not stopper.observe(stats(memory_loss=0.6))  # worse: stale 2
    assert stopper.stale == 2
    assert stopper.observe(stats(memory_loss=0.5))  # stale 3 = patience
    stopper.reset()
    assert stopper.last is None and stopper.stale == 0 and stopper.best_memory == math.inf and not stopper.done


def test_plateau_count_runs_only_while_the_edit_is_right():
    stopper = PatchEarlyStopping(EditConfig(stop_rule="memory_plateau", patience=2))
    for _ in range(5):  # wrong steps never count, however flat the memory loss
        assert not stopper.observe(stats(correct=False, memory_loss=1.0))
        assert stopper.stale == 0 and stopper.best_memory == math.inf
    assert not stopper.observe(stats(memory_loss=1.0))  # the first right step only sets the baseline
    assert not stopper.observe(stats(memory_loss=1.0))  # stale 1
    assert not stopper.observe(stats(correct=False, memory_loss=1.0))  # wrong again: count restarts
    assert stopper.stale == 0
    assert [stopper.observe(stats(memory_loss=1.0)) for _ in range(3)] == [False, False, True]


def test_on_step_end_stops_training_when_done():
    stopper = PatchEarlyStopping(EditConfig())
    control = TrainerControl()
    stopper.observe(stats(correct=False))
    assert not stopper.on_step_end(None, None, control).should_training_stop
    stopper.observe(stats(correct=True, edit=1.0, memory=-4.0))
    assert stopper.on_step_end(None, None, control).should_training_stop


# ---------------------------------------------------------------------- optimizer and parameters
def test_build_optimizer_groups():
    weight, bias = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(2))
    value = torch.nn.Parameter(torch.zeros(2, 4))
    optimizer = build_optimizer([weight, bias], 0.01, 0.1, [value], value_lr_scale=10.0)
    groups = [([id(p) for p in g["params"]], g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
    assert groups == [([id(weight)], 0.01, 0.1), ([id(bias)], 0.01, 0.0), ([id(value)], pytest.approx(0.1), 0.1)]
    assert isinstance(optimizer, torch.optim.AdamW)
    only_keys = build_optimizer([weight, bias], 0.01, 0.1)
    assert [len(g["params"]) for g in only_keys.param_groups] == [1, 1]
    with pytest.raises(ValueError, match="nothing to train"):
        build_optimizer([], 0.01, 0.1, [])


def test_trainable_edit_parameters_of_an_mpn_model(classifier):
    model, tokenizer = patched_classifier(classifier, TEXT, frozen_text=OLD_TEXT)
    parts = next(iter(model.patch_blocks().values()))
    keys, values = trainable_edit_parameters(model)
    key_bank, value_bank = parts["key"].bank("default"), parts["value"].bank("default")
    assert [id(p) for p in keys] == [id(key_bank.weights[-1]), id(key_bank.biases[-1])]
    assert [id(p) for p in values] == [id(value_bank.weights[-1])]
    assert newest_patch(model) == (parts["key"], 1)

    model.freeze_patches()  # no trainable patch left: everything trainable (here nothing) and no values
    assert newest_patch(model) is None
    assert trainable_edit_parameters(model) == ([p for p in model.parameters() if p.requires_grad], [])


def test_trainable_edit_parameters_of_a_plain_model():
    model = make_tiny("bert")
    model.bert.embeddings.requires_grad_(False)
    keys, values = trainable_edit_parameters(model)
    assert values == [] and newest_patch(model) is None
    assert [id(p) for p in keys] == [id(p) for p in model.parameters() if p.requires_grad]
    assert 0 < len(keys) < len(list(model.parameters()))


def test_activation_gap_stops_once_the_memory_loss_is_at_its_floor():
    """A memory loss within the plateau's resolution (1e-4) of 0 cannot improve by it: no need to wait."""
    stopper = PatchEarlyStopping(EditConfig(stop_rule="activation_gap", patience=20))
    assert not stopper.observe(stats(edit=0.5, memory=-2.9, memory_loss=0.02))  # a few inputs above -3, loss > 0
    assert not stopper.observe(stats(edit=0.5, memory=-2.9, memory_loss=1.5e-4))  # above the floor
    assert stopper.observe(stats(edit=0.5, memory=-2.9, memory_loss=0.9e-4))  # at the floor, although not 1e-4 better
    assert stopper.stale == 1  # it stopped without waiting for the plateau
    assert not stopper.observe(stats(correct=False, memory=-2.9, memory_loss=0.0))  # never while the edit is wrong
    assert not stopper.observe(stats(edit=-0.5, memory=-9.0, memory_loss=0.0))  # nor while the patch is silent on it
    t_patcher = PatchEarlyStopping(EditConfig(stop_rule="memory_plateau", patience=3))
    results = [t_patcher.observe(stats(edit=0.5, memory=-2.9, memory_loss=0.0)) for _ in range(4)]
    assert results == [False, False, False, True]  # T-Patcher's rule waits the full patience
    no_memory = PatchEarlyStopping(EditConfig(stop_rule="activation_gap", patience=20))
    assert not no_memory.observe(stats(edit=-0.5, memory=float("nan"), memory_loss=0.0))  # no memory: edit must fire
