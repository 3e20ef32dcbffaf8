"""The fast path: train a last-layer edit on cached FFN inputs, running only the suffix of the network.

Everything below the patched FFN is frozen, so its input ``h`` for the edit examples and the memory never changes
during an edit. :class:`FFNSuffix` computes ``h`` once with one forward pass (stopped at the patched FFN), and
each training step then runs only that FFN block and the classification head: a few small matrix products
instead of a full forward and backward pass through every layer.

Supported: a patch in the *last* layer of a BERT-family classifier (BERT, XLM-R, RoBERTa, CamemBERT, ELECTRA,
DistilBERT), and any model with a ``classify_hidden(sequence_output, attention_mask)`` method. Everything else uses
the full-model path (``fast=False``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .model import layer_index


class FastPathUnsupported(ValueError):
    """The model or patch placement has no fast path; use ``fast=False``."""


class _Stop(Exception):
    """Raised inside a hook to end a forward pass once the FFN input is captured."""


@dataclass
class CachedInputs:
    """FFN inputs of a batch of texts at the patched layer.

    Attributes:
        hidden: ``(batch, tokens, width)`` inputs of the patched FFN block.
        mask: ``(batch, tokens)`` attention mask.
    """

    hidden: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def select(self, rows: torch.Tensor | list[int]) -> CachedInputs:
        """The given rows."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return CachedInputs(self.hidden[rows], self.mask[rows])

    def read(self, position: str) -> torch.Tensor:
        """The vectors where the patch is read: ``(batch, width)`` at [CLS], or ``(n_tokens, width)`` for all."""
        if position == "cls":
            return self.hidden[:, 0]
        return self.hidden[self.mask.bool()]


@torch.no_grad()
def capture_inputs(
    model: nn.Module, module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 64
) -> CachedInputs:
    """The inputs of ``module`` for a tokenised batch: forward passes in chunks, each stopped once it reaches it.

    Below an edited FFN nothing changes during an edit, so these inputs are computed once and reused.
    """
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(grab)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            with contextlib.suppress(_Stop):
                model(
                    input_ids=input_ids[start : start + batch_size],
                    attention_mask=attention_mask[start : start + batch_size],
                )
    finally:
        handle.remove()
    hidden = torch.cat(captured) if captured else torch.zeros(0, input_ids.shape[1], 0)
    return CachedInputs(hidden, attention_mask.clone())


def ffn_function(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h -> layer output`` for the FFN part of a transformer layer, including its residual and norm."""
    if hasattr(layer, "feed_forward_chunk"):  # BERT, XLM-R, RoBERTa, CamemBERT, ELECTRA
        return layer.feed_forward_chunk
    if hasattr(layer, "ffn") and hasattr(layer, "output_layer_norm"):  # DistilBERT
        return lambda h: layer.output_layer_norm(layer.ffn(h) + h)
    raise FastPathUnsupported(
        f"no fast path for {type(layer).__name__} layers; pass fast=False to train through the full model."
    )


def head_function(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(last hidden states, attention mask) -> logits`` for a sequence classifier."""
    if hasattr(model, "classify_hidden"):
        return model.classify_hidden
    name = type(model).__name__
    if name == "BertForSequenceClassification":
        return lambda seq, mask: model.classifier(model.dropout(model.bert.pooler(seq)))
    if name in {
        "XLMRobertaForSequenceClassification",
        "RobertaForSequenceClassification",
        "CamembertForSequenceClassification",
        "ElectraForSequenceClassification",
    }:
        return lambda seq, mask: model.classifier(seq)
    if name == "DistilBertForSequenceClassification":

        def distilbert_head(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            pooled = torch.relu(model.pre_classifier(seq[:, 0]))
            return model.classifier(model.dropout(pooled))

        return distilbert_head
    raise FastPathUnsupported(f"no fast path for the head of {name}; pass fast=False to use the full model.")


class FFNSuffix:
    """Runs a classifier from its last FFN block on cached inputs.

    Args:
        model: The (PEFT-wrapped) classifier; the module named ``block`` must be its last transformer layer.
        block: Name of the patched layer inside the base model, e.g. ``"bert.encoder.layer.11"``.
        key_module: The module whose input is the FFN input (the key projection or its wrapper).

    Raises:
        FastPathUnsupported: If the layer is not the last one or the architecture has no fast path.
    """

    def __init__(self, model: nn.Module, block: str, key_module: nn.Module) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model = model
        self.layer = base.get_submodule(block)
        index = layer_index(block + ".")
        indices = (layer_index(n + ".") for n, _ in base.named_modules() if n.count(".") == block.count("."))
        last = max((i for i in indices if i is not None), default=-1)  # not `or -1`: layer 0 may be the last
        if index is None or index != last:
            raise FastPathUnsupported(
                f"the fast path needs the patch in the last layer, but {block!r} is not; pass fast=False."
            )
        self.ffn = ffn_function(self.layer)
        self.head = head_function(base)
        self.key_module = key_module

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 64) -> CachedInputs:
        """Compute the FFN inputs of a tokenised batch (one forward pass per chunk, stopped at the FFN)."""
        return capture_inputs(self.model, self.key_module, input_ids, attention_mask, batch_size)

    def logits(self, inputs: CachedInputs) -> torch.Tensor:
        """Logits of the cached batch through the patched FFN block and the head."""
        return self.head(self.ffn(inputs.hidden), inputs.mask)
