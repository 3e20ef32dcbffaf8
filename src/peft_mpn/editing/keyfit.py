"""Fitted patch keys: a key solved as a linear classifier of the edit's inputs against the memory.

Transformer-Patcher starts a key at the edit input's direction (``h / |h|^2``) and trains it with its activation and
memory losses. Such a key stays near the input of the training languages: on a decoder LM it does not fire on the
same prompt in another script. A key fitted as a balanced logistic regression of the edit's FFN inputs (positives)
against the memory's (negatives), on inputs centred on the memory mean, separates what the edit prompts share from
what the memory has, and on Gemma 3 270M it fires on held-out translations that the trained key misses
(docs/benchmark.md). Centring costs nothing at inference: the bias absorbs ``k . mean``.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> negatives = torch.randn(200, 8, generator=g)
>>> positives = torch.randn(3, 8, generator=g) + 4.0
>>> key, bias = fit_key(positives, negatives)
>>> bool((positives @ key + bias).min() >= 0.99), bool((negatives @ key + bias).max() < 0)
(True, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_key(
    positives: torch.Tensor,
    negatives: torch.Tensor,
    *,
    l2: float = 1.0,
    max_iter: int = 100,
    edit_activation: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve one neuron's key and bias as a balanced, L2-regularised logistic regression.

    The inputs are centred on the negatives' mean and divided by the negatives' mean centred norm, so that ``l2``
    means the same on every model. The fitted score is then rescaled (its zero, the decision boundary, kept) so that
    the positive with the lowest score gets a pre-activation of ``edit_activation``: Transformer-Patcher's activation
    loss is then met from the start, and the neuron fires wherever the classifier says "this edit".

    Args:
        positives: ``(p, d)`` inputs the neuron must fire on (the edit's, in every training language).
        negatives: ``(n, d)`` inputs it must stay silent on (the memory's).
        l2: Weight of ``|w|^2 / 2`` against the mean class-balanced log loss, times ``1 / (p + n)``
            (scikit-learn's ``C = 1 / l2``).
        max_iter: L-BFGS iterations.
        edit_activation: Pre-activation of the lowest-scoring positive after rescaling.

    Returns:
        ``(key (d,), bias ())`` in the input's original coordinates and in float32, so that the pre-activation is
        ``x @ key + bias``. Where no positive scores above the boundary, the scale is that of the mean positive.

    Raises:
        ValueError: Empty or mismatched inputs.
    """
    if positives.ndim != 2 or negatives.ndim != 2 or positives.shape[1] != negatives.shape[1]:
        raise ValueError(
            f"fit_key needs positives (p, d) and negatives (n, d) of one width, got {tuple(positives.shape)} and "
            f"{tuple(negatives.shape)}."
        )
    if not len(positives) or not len(negatives):
        raise ValueError("fit_key needs at least one positive and one negative input.")
    pos, neg = positives.detach().float(), negatives.detach().float()
    mean = neg.mean(0)
    scale = (neg - mean).norm(dim=1).mean().clamp_min(1e-8)
    x = torch.cat([pos, neg]).sub(mean).div(scale)
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).to(x.device)
    weight = torch.where(y > 0, 0.5 / len(pos), 0.5 / len(neg))
    w = torch.zeros(x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros((), device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * weight).sum()
        loss = loss + l2 * (w @ w) / (2 * len(x))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    w, b = w.detach(), b.detach()
    scores = x[: len(pos)] @ w + b
    low = scores.min()
    rescale = edit_activation / (low if low > 0 else scores.mean().abs().clamp_min(1e-6))
    key = w * rescale / scale
    return key, (b * rescale - key @ mean)
