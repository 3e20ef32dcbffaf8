"""The optimiser of an edit: AdamW over the new patch (values at their own learning rate), and gradient clipping."""

from __future__ import annotations

from typing import Any

import torch


def build_optimizer(
    params: list[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    values: list[torch.nn.Parameter] | None = None,
    value_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not biases), as transformers' Trainer does.

    ``values`` (patch value vectors) train at ``lr * value_lr_scale``.
    """
    values = values or []
    if not params and not values:
        raise ValueError("nothing to train: the model has no trainable edit parameters (did you call add_patch()?).")
    groups = []
    for group, group_lr in ((params, lr), (values, lr * value_lr_scale)):
        decay = [p for p in group if p.dim() > 1]
        no_decay = [p for p in group if p.dim() <= 1]
        groups += [
            {"params": decay, "weight_decay": weight_decay, "lr": group_lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": group_lr},
        ]
    groups = [g for g in groups if g["params"]]
    # The fused kernel does one pass for all tensors: ~10x less overhead per step on the small patch tensors. Older
    # torch versions have it for CUDA only; they fall back to the default implementation.
    devices = {p.device.type for group in groups for p in group["params"]}
    if devices <= {"cpu", "cuda"} and all(p.dtype.is_floating_point for g in groups for p in g["params"]):
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except RuntimeError:
            pass
    return torch.optim.AdamW(groups, lr=lr)


class LeanAdamW:
    """The fused AdamW step of ``torch.optim.AdamW(fused=True)`` without the ``Optimizer`` bookkeeping around it.

    An edit trains three small tensors for a few dozen steps; ``Optimizer.step`` spends ~0.2 ms per step on
    bookkeeping around a kernel that takes ~10 us. This calls the same kernel with the same arguments, so the
    parameters follow the same trajectory bit for bit (tested against ``torch.optim.AdamW``). Use
    :func:`edit_optimizer`, which falls back to ``torch.optim.AdamW`` where the fused kernel is missing.

    Args:
        groups: Parameter groups as for ``torch.optim.AdamW``: ``params``, ``lr`` and ``weight_decay`` each.
        betas: Adam's betas; ``eps``: its epsilon (the ``torch.optim.AdamW`` defaults).
    """

    def __init__(self, groups: list[dict[str, Any]], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = groups
        self.betas, self.eps = betas, eps
        self.state = [
            (
                [torch.zeros_like(p, memory_format=torch.preserve_format) for p in g["params"]],
                [torch.zeros_like(p, memory_format=torch.preserve_format) for p in g["params"]],
                [torch.tensor(0.0, dtype=_step_dtype(p), device=p.device) for p in g["params"]],
            )
            for g in groups
        ]

    def zero_grad(self) -> None:
        """Drop the gradients (as ``set_to_none=True``)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW step on every parameter that has a gradient."""
        for group, (exp_avgs, exp_avg_sqs, steps) in zip(self.param_groups, self.state):
            chosen = [i for i, p in enumerate(group["params"]) if p.grad is not None]
            if not chosen:
                continue
            step_tensors = [steps[i] for i in chosen]
            torch._foreach_add_(step_tensors, 1)
            torch._fused_adamw_(
                [group["params"][i] for i in chosen],
                [group["params"][i].grad for i in chosen],
                [exp_avgs[i] for i in chosen],
                [exp_avg_sqs[i] for i in chosen],
                [],
                step_tensors,
                amsgrad=False,
                lr=group["lr"],
                beta1=self.betas[0],
                beta2=self.betas[1],
                weight_decay=group["weight_decay"],
                eps=self.eps,
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )


def _step_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def edit_optimizer(
    params: list[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    values: list[torch.nn.Parameter] | None = None,
    value_lr_scale: float = 1.0,
) -> torch.optim.Optimizer | LeanAdamW:
    """The optimizer of a fast-path edit: :class:`LeanAdamW` where the fused kernel runs, else :func:`build_optimizer`.

    Both follow the same trajectory as ``build_optimizer``'s fused ``torch.optim.AdamW``.
    """
    optimizer = build_optimizer(params, lr, weight_decay, values, value_lr_scale)
    if not getattr(optimizer, "defaults", {}).get("fused") or not hasattr(torch, "_fused_adamw_"):
        return optimizer
    groups = [{k: g[k] for k in ("params", "lr", "weight_decay")} for g in optimizer.param_groups]
    return LeanAdamW(groups, betas=optimizer.defaults["betas"], eps=optimizer.defaults["eps"])


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)`` for a few tensors of one device and dtype.

    The same arithmetic (per-tensor norms, their norm, ``max_norm / (total + 1e-6)`` clamped at 1), without the
    grouping and checks that cost ~0.1 ms per step; anything else goes to torch's function.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if len({(g.device, g.dtype) for g in grads}) != 1 or not hasattr(torch, "_foreach_norm"):
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    norms = torch._foreach_norm(grads, 2.0)
    total = torch.linalg.vector_norm(torch.stack(list(norms)), 2.0)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coefficient)
