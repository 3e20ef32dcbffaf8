"""The fast path's shared pieces: capture the patched FFN's inputs once, and cache the memory's read vectors.

Everything below the patched FFN is frozen, so its input ``h`` for the edit examples and the memory never changes
during an edit. Each task computes ``h`` once (:func:`capture_inputs`, a forward pass stopped at the patched FFN)
and runs only the suffix of the network above it in every training step: the classification task's
``FFNSuffix`` (``peft_mpn.tasks.classification.fastpath``) and the generation task's ``LMSuffix``
(``peft_mpn.tasks.generation.fastpath``). :class:`MemoryCache` holds the memory's read vectors and computes the new
patch's pre-activations on them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


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
