"""The classification fast path: train a last-layer edit on cached FFN inputs, running only the suffix above it.

Everything below the patched FFN is frozen, so its input ``h`` for the edit examples and the memory never changes
during an edit. :class:`FFNSuffix` computes ``h`` once with one forward pass (stopped at the patched FFN), and
each training step then runs only that FFN block and the classification head: a few small matrix products
instead of a full forward and backward pass through every layer.

Supported: a patch in the *last* layer of a BERT-family classifier (BERT, XLM-R, RoBERTa, CamemBERT, ELECTRA,
DistilBERT), and any model with a ``classify_hidden(sequence_output, attention_mask)`` method. Everything else uses
the full-model path (``fast=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ...editing.fastpath import CachedInputs, FastPathUnsupported, capture_inputs
from ...tuner.layer import MPNLayer
from ...tuner.model import layer_index


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


@dataclass
class FFNParts:
    """The pieces of a standard FFN block: ``post(value(act(key(h))), h)``.

    Attributes:
        key: The FFN input projection (an ``MPNLayer`` when patched).
        value: The FFN output projection.
        act: The activation between them.
        post: ``(value output, FFN input) -> layer output``: dropout, residual and norm.
    """

    key: nn.Module
    value: nn.Module
    act: Callable[[torch.Tensor], torch.Tensor]
    post: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ffn_parts(layer: nn.Module) -> FFNParts | None:
    """The FFN pieces of a BERT-family or DistilBERT layer, or None for another structure."""
    inter, out = getattr(layer, "intermediate", None), getattr(layer, "output", None)
    if all(hasattr(inter, a) for a in ("dense", "intermediate_act_fn")) and all(
        hasattr(out, a) for a in ("dense", "dropout", "LayerNorm")
    ):  # BERT, XLM-R, RoBERTa, CamemBERT, ELECTRA: BertIntermediate + BertOutput

        def bert_post(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return out.LayerNorm(out.dropout(y) + h)

        return FFNParts(inter.dense, out.dense, inter.intermediate_act_fn, bert_post)
    ffn = getattr(layer, "ffn", None)
    if hasattr(layer, "output_layer_norm") and all(hasattr(ffn, a) for a in ("lin1", "lin2", "activation", "dropout")):

        def distilbert_post(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return layer.output_layer_norm(ffn.dropout(y) + h)

        return FFNParts(ffn.lin1, ffn.lin2, ffn.activation, distilbert_post)
    return None


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
        parts = ffn_parts(self.layer)
        usable = parts is not None and parts.key is key_module and isinstance(parts.value, MPNLayer)
        self.parts = parts if usable else None

    @property
    def can_split(self) -> bool:
        """Whether :meth:`patch_logits` applies: a standard FFN block whose projections carry MPN patches."""
        return self.parts is not None

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 64) -> CachedInputs:
        """Compute the FFN inputs of a tokenised batch (one forward pass per chunk, stopped at the FFN)."""
        return capture_inputs(self.model, self.key_module, input_ids, attention_mask, batch_size)

    def logits(self, inputs: CachedInputs) -> torch.Tensor:
        """Logits of the cached batch through the patched FFN block and the head."""
        return self.head(self.ffn(inputs.hidden), inputs.mask)

    @torch.no_grad()
    def value_output(self, inputs: CachedInputs) -> torch.Tensor:
        """Output of the FFN output projection (before dropout, residual and norm) with the current patches.

        Computed once per edit, before the new patch is added: while only the new patch trains, this part of the
        FFN output is constant, and :meth:`patch_logits` adds the new unit to it.
        """
        if self.parts is None:
            raise FastPathUnsupported("value_output needs a standard FFN block with MPN patches (see can_split).")
        return self.parts.value(self.parts.act(self.parts.key(inputs.hidden)))

    def patch_logits(
        self,
        inputs: CachedInputs,
        base_output: torch.Tensor,
        key: torch.Tensor,
        bias: torch.Tensor,
        value: torch.Tensor,
        sharpness: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits with one more patch on top of a constant FFN output, and the new patch's pre-activations.

        The layer output is ``post(base_output + act(s (h k^T + b)) v / s, h)``: the same function of the new patch
        as the full FFN, at the cost of the new unit alone (the FFN's own ``width x d`` products are in
        ``base_output``, computed once by :meth:`value_output`).

        Args:
            inputs: Cached FFN inputs ``h`` of the rows.
            base_output: :meth:`value_output` of the same rows (without the new patch).
            key: ``(n, in)`` key of the new patch; ``bias``: ``(n,)``; ``value``: ``(n, out)``.
            sharpness: The adapter's ``sharpness`` ``s``.

        Returns:
            ``(logits, pre)``: ``(rows, classes)`` logits and the ``(rows, tokens, n)`` pre-activations
            ``h k^T + b`` in the natural scale, as the losses use them.
        """
        if self.parts is None:
            raise FastPathUnsupported("patch_logits needs a standard FFN block with MPN patches (see can_split).")
        pre = torch.matmul(inputs.hidden, key.T) + bias
        units = self.parts.act(pre * sharpness if sharpness != 1.0 else pre)
        update = torch.matmul(units, value / sharpness if sharpness != 1.0 else value)
        return self.head(self.parts.post(base_output + update, inputs.hidden), inputs.mask), pre
