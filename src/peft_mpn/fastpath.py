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
from typing import Any

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

    def trim(self) -> CachedInputs:
        """Without trailing columns that are padding in every row (e.g. after encoding with longer texts)."""
        used = torch.nonzero(self.mask.any(0)).squeeze(1)
        end = int(used.max()) + 1 if used.numel() else 0
        if end == self.mask.shape[1]:
            return self
        return CachedInputs(self.hidden[:, :end], self.mask[:, :end])

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
        self.parts = parts if parts is not None and parts.key is key_module and _is_mpn(parts.value) else None

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


def _is_mpn(module: nn.Module) -> bool:
    from .layer import MPNLayer

    return isinstance(module, MPNLayer)


class _MemoryActs(torch.autograd.Function):
    """Pre-activations ``reads @ key^T + bias`` of a patch on the memory, with a backward pass that skips rows.

    ``columns`` is the ``(width, rows)`` memory, stored transposed so that products with the whole memory are fast
    matrix-vector products. The memory loss has a gradient on few rows (those above the threshold and the top k) or
    on nearly all of them with one common value ``c``; the backward pass then writes the key's gradient as
    ``c * sum(reads) + sum_i (g_i - c) r_i`` over the few rows where ``g_i != c``.
    """

    @staticmethod
    def forward(ctx: Any, key: torch.Tensor, bias: torch.Tensor, columns: torch.Tensor, total: torch.Tensor) -> Any:
        ctx.save_for_backward(columns, total)
        return torch.addmm(bias.unsqueeze(1), key, columns).T

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        columns, total = ctx.saved_tensors
        grad_key = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_bias = grad.sum(0)
        if ctx.needs_input_grad[0]:
            grad_key = _rows_product(grad, columns, total)
        return grad_key, grad_bias, None, None


_FEW_ROWS = 64  # up to this many rows, gathering them beats a product with the whole memory


def _rows_product(grad: torch.Tensor, columns: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``grad^T @ reads`` (``(n, width)``), touching only rows whose gradient differs from the common value."""
    if grad.shape[1] != 1 or columns.shape[1] < 4 * _FEW_ROWS:
        return (columns @ grad).T
    g = grad[:, 0]
    nonzero = torch.nonzero(g).squeeze(1)
    if nonzero.numel() <= _FEW_ROWS:
        return (columns[:, nonzero] @ g[nonzero]).unsqueeze(0)
    if g.numel() - nonzero.numel() > _FEW_ROWS:  # the zero rows alone already differ from any common value
        return (columns @ grad).T
    common = g.median()  # the value of more than half of the rows, when there is one
    differ = torch.nonzero(g != common).squeeze(1)
    if differ.numel() <= _FEW_ROWS:
        return (common * total + columns[:, differ] @ (g[differ] - common)).unsqueeze(0)
    return (columns @ grad).T


class MemoryCache:
    """Read vectors of the memory at the patched layer, for the memory loss of the fast path.

    The vectors are stored transposed, ``(width, rows)``, where a product with the whole memory is about 1.5x
    faster than row by row. Storage grows in place, so appending an edit's texts copies nothing already cached; its
    capacity is the next power of two of the row count, a function of the rows alone: products with the memory
    then carry the same bits whether the rows came one edit at a time or all at once (a resumed stream gives the
    same adapter as an uninterrupted one).

    Attributes:
        rows: Number of cached read vectors.
        texts: Number of memory texts cached.
    """

    _SUM_BLOCK = 1024  # rows per block of the column sum, so that it depends on the rows alone, not on history

    def __init__(self) -> None:
        self._columns: torch.Tensor | None = None  # (width, capacity)
        self._owners: torch.Tensor | None = None
        self._block_sums: list[torch.Tensor] = []  # float64 sums of complete blocks of rows
        self._total: torch.Tensor | None = None  # sum of all rows
        self.rows = 0
        self.texts = 0

    def __len__(self) -> int:
        return self.rows

    @property
    def reads(self) -> torch.Tensor | None:
        """``(rows, width)`` read vectors (a transposed view of the storage), or None before anything is cached."""
        return None if self._columns is None else self._columns[:, : self.rows].T

    @property
    def owners(self) -> torch.Tensor | None:
        """``(rows,)``: the memory text each read vector belongs to."""
        return None if self._owners is None else self._owners[: self.rows]

    def append(self, reads: torch.Tensor, owners: torch.Tensor, texts: int) -> None:
        """Add ``reads`` (``(k, width)``) of ``texts`` new memory texts; ``owners`` counts from 0 for the first."""
        reads = reads.detach()
        start, need = self.rows, self.rows + reads.shape[0]
        if self._columns is None or need > self._columns.shape[1]:
            capacity = max(64, 1 << (need - 1).bit_length())
            columns = reads.new_empty(reads.shape[1], capacity)
            owner_store = torch.empty(capacity, dtype=torch.long, device=reads.device)
            if self._columns is not None:
                columns[:, :start] = self._columns[:, :start]
                owner_store[:start] = self._owners[:start]
            self._columns, self._owners = columns, owner_store
        self._columns[:, start:need] = reads.T
        self._owners[start:need] = owners.to(self._owners.device) + self.texts
        self.rows, self.texts = need, self.texts + texts
        self._update_total()

    def _update_total(self) -> None:
        """The column sum, from fixed blocks of rows: the same rows give the same bits, however they arrived."""
        block = self._SUM_BLOCK
        while (len(self._block_sums) + 1) * block <= self.rows:
            first = len(self._block_sums) * block
            self._block_sums.append(self._columns[:, first : first + block].double().sum(1))
        total = self._columns[:, len(self._block_sums) * block : self.rows].double().sum(1)
        for part in reversed(self._block_sums):
            total = part + total
        self._total = total.to(self._columns.dtype)

    def acts(self, key: torch.Tensor, bias: torch.Tensor, texts: list[int] | None = None) -> torch.Tensor:
        """Pre-activations ``(rows, n)`` of a patch (``key`` ``(n, width)``, ``bias`` ``(n,)``) on the memory.

        Args:
            key: The patch's key; ``bias``: its bias.
            texts: Only the rows of these memory texts (a sampled memory batch); None for all.
        """
        if self._columns is None or self.rows == 0:
            return key.new_zeros(0, key.shape[0])
        if texts is not None and len(texts) < self.texts:
            chosen = torch.isin(self.owners, torch.as_tensor(texts, dtype=torch.long, device=self.owners.device))
            return self.reads[chosen] @ key.T + bias
        return _MemoryActs.apply(key, bias, self._columns[:, : self.rows], self._total)
