"""GenerationEditCollator: prompt + target ids, causal and seq2seq batches, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers as tf

from conftest import _word_tokenizer, lm_word_tokenizer, make_tiny_lm
from peft_mpn import GenerationEditCollator, GenerationEditRecord
from peft_mpn.tasks.generation.collator import leading_special_ids, pad_right


RECORD = GenerationEditRecord.from_dict(
    {
        "id": "r",
        "prompt": {"en": "v1 v2 v3", "fr": "v1_fr v2_fr v3_fr v4_fr"},
        "target": {"en": " E1 E2", "fr": " E1 E2"},
    }
)


def test_encode_puts_bos_before_the_prompt_and_target_positions_predict_the_target(lm_tokenizer):
    collator = GenerationEditCollator(lm_tokenizer, ["en", "fr"])
    vocab = lm_tokenizer.get_vocab()
    enc = collator.encode_record(RECORD, "en")
    assert enc.prompt_ids == [vocab["<s>"], vocab["v1"], vocab["v2"], vocab["v3"]]
    assert enc.target_ids == [vocab["E1"], vocab["E2"]]
    assert enc.ids == enc.prompt_ids + enc.target_ids
    assert [enc.ids[p + 1] for p in enc.target_positions] == enc.target_ids  # logits at p predict token p + 1
    assert collator.text_ids("v5 v6") == [vocab["<s>"], vocab["v5"], vocab["v6"]]


def test_leading_special_ids_keeps_prefix_drops_suffix(lm_tokenizer):
    assert leading_special_ids(lm_tokenizer) == [lm_tokenizer.bos_token_id]
    assert leading_special_ids(lm_word_tokenizer(bos=False)) == []  # GPT-2 and Qwen2 style: nothing added
    bert_style = _word_tokenizer()  # "[CLS] $A [SEP]": keep [CLS], never end a prompt with [SEP]
    assert leading_special_ids(bert_style) == [bert_style.cls_token_id]


def test_causal_batch_labels_only_targets_and_matches_the_model_loss(lm_tokenizer):
    memory = ["v7 v8 v9", "v10 v11"]
    collator = GenerationEditCollator(lm_tokenizer, ["en", "fr"], memory=memory, edit_repeat=8)
    batch = collator.build(RECORD, step=0)
    assert batch["languages"] == ["en", "fr"] and batch["row_weights"].tolist() == [8.0, 1.0]
    assert batch["edit_mask"].tolist() == [True, True, False, False]
    assert batch["input_ids"].shape == (4, 7)  # "<s> v1_fr v2_fr v3_fr v4_fr E1 E2" is the longest row
    assert (batch["labels"][2:] == -100).all()  # memory rows: read, no loss
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labelled == collator.encode_record(RECORD, "en").target_ids

    model = make_tiny_lm("llama", len(lm_tokenizer))
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    by_hand = []
    for row, lang in enumerate(batch["languages"]):
        enc = collator.encode_record(RECORD, lang)
        logits = out.logits[row, enc.target_positions]
        by_hand.append(F.cross_entropy(logits, torch.tensor(enc.target_ids), reduction="none"))
    assert torch.allclose(out.loss, torch.cat(by_hand).mean(), atol=1e-5)


def test_random_k_sampling_and_trainer_call(lm_tokenizer):
    langs = ("en", "fr", "de")
    record = GenerationEditRecord.from_dict(
        {"id": "r", "prompt": {x: f"v1 v2 v{i}" for i, x in enumerate(langs)}, "target": {x: " E1" for x in langs}}
    )
    collator = GenerationEditCollator(lm_tokenizer, ["en", "fr", "de"], sampling="random_k", k=1, edit_repeat=2)
    seen = {tuple(collator.build(record, step)["languages"]) for step in range(20)}
    assert seen == {("en", "fr"), ("en", "de")}
    assert collator([{"record": record, "step": 3}])["languages"] == collator.build(record, 3)["languages"]
    with pytest.raises(ValueError, match="GenerationEditCollator builds one edit per batch.*batch_size=1"):
        collator([{"record": record}, {"record": record}])


def test_seq2seq_batch_feeds_a_tiny_bart(lm_tokenizer):
    torch.manual_seed(0)
    config = tf.BartConfig(
        vocab_size=len(lm_tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=3,
        max_position_embeddings=32,
    )
    model = tf.BartForConditionalGeneration(config).eval()
    collator = GenerationEditCollator(
        lm_tokenizer, ["en"], memory=["v7 v8 v9"], kind="seq2seq", decoder_start_token_id=config.decoder_start_token_id
    )
    batch = collator.build(RECORD)
    vocab = lm_tokenizer.get_vocab()
    eos = lm_tokenizer.eos_token_id
    assert batch["labels"][0].tolist() == [vocab["E1"], vocab["E2"], eos, -100]  # padded to the memory row
    assert batch["decoder_input_ids"][0, :3].tolist() == [3, vocab["E1"], vocab["E2"]]
    assert batch["decoder_input_ids"][1].tolist() == [3, *collator.text_ids("v7 v8 v9")[:-1]]  # memory, shifted
    assert (batch["labels"][1] == -100).all()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")}
    with torch.no_grad():
        out = model(**inputs, labels=batch["labels"])
    expected = F.cross_entropy(out.logits[0, :3], batch["labels"][0, :3])
    assert torch.allclose(out.loss, expected, atol=1e-5)


def test_errors_name_the_fix(lm_tokenizer):
    collator = GenerationEditCollator(lm_tokenizer, ["en", "de"], max_length=6)
    with pytest.raises(ValueError, match=r"'prompt' has no text in training languages \['de'\]; add the translations"):
        collator.build(RECORD)
    with pytest.raises(ValueError, match="max_length=6"):
        GenerationEditCollator(lm_tokenizer, ["en", "fr"], max_length=6).encode_record(RECORD, "fr")
    with pytest.raises(TypeError, match="GenerationEditRecord"):
        collator.check({"id": "r"})
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        GenerationEditCollator(lm_tokenizer, ["en"], kind="seq2seq")
    with pytest.raises(ValueError, match="'causal' or 'seq2seq'"):
        GenerationEditCollator(lm_tokenizer, ["en"], kind="encoder")
    with pytest.raises(TypeError, match="list of codes"):
        GenerationEditCollator(lm_tokenizer, "en")
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("scheme", ["sentencepiece", "byte-level"])
def test_target_gets_its_running_text_token(scheme):
    """LLaMA-2's tokenizer splits " Rome" alone into ["▁", "▁Rome"]; in running text it is one token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    space = "▁" if scheme == "sentencepiece" else "Ġ"
    words = ["<unk>", space, f"{space}Rome", "Rome", "The", f"{space}The", f"{space}capital", f"{space}is"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    if scheme == "sentencepiece":  # as LLaMA-2's tokenizer.json: prepend "▁", spaces become "▁"
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<unk>")
    if scheme == "sentencepiece":
        assert tokenizer(" Rome", add_special_tokens=False)["input_ids"] == [1, 2]  # the split we must avoid
    enc = GenerationEditCollator(tokenizer).encode("The capital is", " Rome")
    assert enc.target_ids == [words.index(f"{space}Rome")]
    assert enc.prompt_ids == [
        words.index(w)
        for w in (f"{space}The" if scheme == "sentencepiece" else "The", f"{space}capital", f"{space}is")
    ]
