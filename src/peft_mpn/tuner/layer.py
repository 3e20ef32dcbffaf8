"""Patch-neuron layers: the key, up and value wrappers that MPN puts on the projections of an FFN block.

A patch neuron adds ``v * act(k . x + b)`` to an FFN block. It needs no hooks: the *key* wrapper on the FFN input
projection appends one output unit per neuron (``k . x + b``), the FFN applies its own activation to every unit,
and the *value* wrapper on the FFN output projection consumes the extra units (``+ h_extra @ V``). Gated MLPs also
wrap the up projection, whose units start as a constant 1 so that the neuron is ``v * act(k . x + b) * 1``.

Merging is exact: it appends rows (and biases) to the input projection and columns to the output projection.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D


Role = Literal["key", "up", "value"]
ROLES: tuple[Role, ...] = ("key", "up", "value")


def is_supported_layer(module: nn.Module) -> bool:
    """Whether MPN can wrap ``module`` (``nn.Linear`` or GPT-2's transposed ``Conv1D``)."""
    return isinstance(module, (nn.Linear, Conv1D))


def layer_features(module: nn.Module) -> tuple[int, int]:
    """Return ``(in_features, out_features)`` of a ``nn.Linear`` or ``Conv1D``."""
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    raise TypeError(
        f"MPN can patch nn.Linear and transformers' Conv1D FFN projections, not {type(module).__name__}. "
        "Point key_modules/value_modules at the FFN's linear layers."
    )


def append_output_units(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Append output units to a linear layer: rows ``weight`` (n, in) and ``bias`` (n,).

    A layer without a bias gets a zero bias for its old units.
    """
    weight = weight.to(module.weight.dtype)
    bias = bias.to(module.weight.dtype)
    n = weight.shape[0]
    if isinstance(module, Conv1D):
        old_bias = module.bias if module.bias is not None else module.weight.new_zeros(module.weight.shape[1])
        module.weight = nn.Parameter(torch.cat([module.weight.data, weight.T], dim=1), requires_grad=False)
        module.nf = module.weight.shape[1]
    else:
        old_bias = module.bias if module.bias is not None else module.weight.new_zeros(module.weight.shape[0])
        module.weight = nn.Parameter(torch.cat([module.weight.data, weight], dim=0), requires_grad=False)
        module.out_features += n
    module.bias = nn.Parameter(torch.cat([old_bias.data, bias]), requires_grad=False)


def append_input_units(module: nn.Module, weight: torch.Tensor) -> None:
    """Append input units to a linear layer: ``weight`` (n, out) maps the new inputs to the outputs."""
    weight = weight.to(module.weight.dtype)
    if isinstance(module, Conv1D):
        module.weight = nn.Parameter(torch.cat([module.weight.data, weight], dim=0), requires_grad=False)
    else:
        module.weight = nn.Parameter(torch.cat([module.weight.data, weight.T], dim=1), requires_grad=False)
        module.in_features += weight.shape[0]


def truncate_output_units(module: nn.Module, n: int, drop_bias: bool = False) -> None:
    """Remove the last ``n`` output units of a linear layer (the inverse of :func:`append_output_units`)."""
    if n == 0 and not drop_bias:
        return
    if isinstance(module, Conv1D):
        module.weight = nn.Parameter(module.weight.data[:, : module.weight.shape[1] - n], requires_grad=False)
        module.nf = module.weight.shape[1]
    else:
        module.weight = nn.Parameter(module.weight.data[: module.weight.shape[0] - n], requires_grad=False)
        module.out_features -= n
    if drop_bias:
        module.bias = None
    elif module.bias is not None:
        module.bias = nn.Parameter(module.bias.data[: module.bias.shape[0] - n], requires_grad=False)


def truncate_input_units(module: nn.Module, n: int) -> None:
    """Remove the last ``n`` input units of a linear layer (the inverse of :func:`append_input_units`)."""
    if n == 0:
        return
    if isinstance(module, Conv1D):
        module.weight = nn.Parameter(module.weight.data[: module.weight.shape[0] - n], requires_grad=False)
    else:
        module.weight = nn.Parameter(module.weight.data[:, : module.weight.shape[1] - n], requires_grad=False)
        module.in_features -= n


class PatchBank(nn.Module):
    """The patches of one adapter on one wrapped projection.

    Each patch is a block of ``n`` rows of width ``dim`` (``in_features`` for key/up, ``out_features`` for value),
    plus a bias for key/up. Trainable patches are one ``nn.Parameter`` each in a ``ParameterList``, so growing never
    replaces a Parameter an optimizer holds. Frozen patches are consolidated into one buffer, which no
    ``requires_grad`` toggling can unfreeze and which the forward pass reads without concatenating thousands of
    tensors. ``sizes`` and ``num_frozen`` are buffers too, so a saved state dict describes its own shapes.

    Args:
        role: ``"key"``, ``"up"`` or ``"value"``.
        dim: Width of each patch row.
        dtype: Dtype of the patch tensors.
        device: Device of the patch tensors.
        sharpness: ``s`` of the unit ``(v / s) * act(s * (k . x + b))`` (see ``MPNConfig.sharpness``). The
            parameters stay in the natural scale; :meth:`effective_weight` and :meth:`effective_bias` give what the
            base projection would hold.
    """

    def __init__(
        self,
        role: Role,
        dim: int,
        dtype: torch.dtype,
        device: torch.device | None = None,
        sharpness: float = 1.0,
    ) -> None:
        super().__init__()
        self.role = role
        self.dim = dim
        self.sharpness = float(sharpness)
        self.has_bias = role != "value"
        self.register_buffer("frozen_weight", torch.zeros(0, dim, dtype=dtype, device=device))
        self.register_buffer("frozen_bias", torch.zeros(0, dtype=dtype, device=device) if self.has_bias else None)
        self.register_buffer("sizes", torch.zeros(0, dtype=torch.long, device=device))
        self.register_buffer("num_frozen", torch.zeros(1, dtype=torch.long, device=device))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()

    @property
    def num_neurons(self) -> int:
        """Total neurons, frozen and trainable."""
        return self.frozen_weight.shape[0] + sum(w.shape[0] for w in self.weights)

    @property
    def num_patches(self) -> int:
        """Number of patches, frozen and trainable."""
        return int(self.sizes.numel())

    def extra_repr(self) -> str:
        return f"role={self.role}, dim={self.dim}, patches={self.num_patches}, frozen={int(self.num_frozen)}"

    def weight(self) -> torch.Tensor:
        """All patch rows, oldest first: ``(num_neurons, dim)``."""
        if len(self.weights) == 0:
            return self.frozen_weight
        return torch.cat([self.frozen_weight, *self.weights], dim=0)

    def bias(self) -> torch.Tensor | None:
        """All patch biases, oldest first (``None`` for a value bank)."""
        if not self.has_bias:
            return None
        if len(self.biases) == 0:
            return self.frozen_bias
        return torch.cat([self.frozen_bias, *self.biases], dim=0)

    def effective_weight(self) -> torch.Tensor:
        """The rows as the projection uses them: ``s * k`` for a key bank, ``v / s`` for a value bank."""
        weight = self.weight()
        if self.sharpness == 1.0 or self.role == "up":
            return weight
        return weight * self.sharpness if self.role == "key" else weight / self.sharpness

    def effective_bias(self) -> torch.Tensor | None:
        """The biases as the projection uses them: ``s * b`` for a key bank."""
        bias = self.bias()
        if bias is None or self.sharpness == 1.0 or self.role != "key":
            return bias
        return bias * self.sharpness

    def add(self, weight: torch.Tensor, bias: torch.Tensor | None, requires_grad: bool = True) -> None:
        """Append one trainable patch of ``weight.shape[0]`` neurons."""
        ref = self.frozen_weight
        self.weights.append(nn.Parameter(weight.detach().to(ref.dtype).to(ref.device), requires_grad=requires_grad))
        if self.has_bias:
            self.biases.append(nn.Parameter(bias.detach().to(ref.dtype).to(ref.device), requires_grad=requires_grad))
        new_size = torch.tensor([weight.shape[0]], dtype=torch.long, device=self.sizes.device)
        self.sizes = torch.cat([self.sizes, new_size])

    def pop(self) -> None:
        """Remove the newest patch; it must be trainable (frozen patches are consolidated)."""
        if len(self.weights) == 0:
            raise ValueError("the newest patch is frozen (or there is none); call unfreeze_patches() first.")
        self.weights = nn.ParameterList(list(self.weights)[:-1])
        if self.has_bias:
            self.biases = nn.ParameterList(list(self.biases)[:-1])
        self.sizes = self.sizes[:-1].clone()

    def remove(self, patches: Sequence[int]) -> None:
        """Remove the patches at these indices (oldest first is 0), frozen or trainable. Exact.

        The remaining rows keep their order and values; frozen patches stay frozen and consolidated, trainable ones
        keep their Parameters (an optimizer over them stays valid).
        """
        drop = sorted({int(i) for i in patches})
        sizes = self.sizes.tolist()
        if any(not 0 <= i < len(sizes) for i in drop):
            raise IndexError(f"patch indices {drop} out of range: the bank holds {len(sizes)} patches.")
        if not drop:
            return
        n_frozen = int(self.num_frozen)
        frozen_drop = [i for i in drop if i < n_frozen]
        if frozen_drop:
            starts = [0]
            for size in sizes[:n_frozen]:
                starts.append(starts[-1] + size)
            keep = [row for i in range(n_frozen) if i not in frozen_drop for row in range(starts[i], starts[i + 1])]
            index = torch.tensor(keep, dtype=torch.long, device=self.frozen_weight.device)
            self.frozen_weight = self.frozen_weight.index_select(0, index).clone()
            if self.has_bias:
                self.frozen_bias = self.frozen_bias.index_select(0, index).clone()
        trainable_drop = {i - n_frozen for i in drop if i >= n_frozen}
        if trainable_drop:
            self.weights = nn.ParameterList([w for j, w in enumerate(self.weights) if j not in trainable_drop])
            if self.has_bias:
                self.biases = nn.ParameterList([b for j, b in enumerate(self.biases) if j not in trainable_drop])
        kept = [s for i, s in enumerate(sizes) if i not in set(drop)]
        self.sizes = torch.tensor(kept, dtype=torch.long, device=self.sizes.device)
        self.num_frozen.fill_(n_frozen - len(frozen_drop))

    def freeze(self) -> None:
        """Consolidate every patch into the frozen buffers."""
        if len(self.weights) == 0:
            return
        with torch.no_grad():
            self.frozen_weight = self.weight().detach().clone()
            if self.has_bias:
                self.frozen_bias = self.bias().detach().clone()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.num_frozen.fill_(self.num_patches)

    def unfreeze(self, requires_grad: bool = True) -> None:
        """Split the frozen buffers back into one trainable Parameter per patch."""
        n_frozen = int(self.num_frozen)
        if n_frozen == 0:
            return
        split = self.sizes[:n_frozen].tolist()
        weights = [nn.Parameter(w.clone(), requires_grad=requires_grad) for w in self.frozen_weight.split(split)]
        self.weights = nn.ParameterList([*weights, *self.weights])
        if self.has_bias:
            biases = [nn.Parameter(b.clone(), requires_grad=requires_grad) for b in self.frozen_bias.split(split)]
            self.biases = nn.ParameterList([*biases, *self.biases])
        self.frozen_weight = self.frozen_weight[:0].clone()
        if self.has_bias:
            self.frozen_bias = self.frozen_bias[:0].clone()
        self.num_frozen.zero_()

    def resize(self, sizes: Sequence[int], num_frozen: int, requires_grad: bool = True) -> None:
        """Rebuild empty (zero) patches of the given sizes, so that a saved state dict can be loaded."""
        sizes = [int(s) for s in sizes]
        if not 0 <= num_frozen <= len(sizes):
            raise ValueError(f"num_frozen={num_frozen} must lie between 0 and the number of patches ({len(sizes)}).")
        ref = self.frozen_weight
        n_frozen = sum(sizes[:num_frozen])
        self.frozen_weight = ref.new_zeros(n_frozen, self.dim)
        if self.has_bias:
            self.frozen_bias = ref.new_zeros(n_frozen)
        self.weights = nn.ParameterList(
            [nn.Parameter(ref.new_zeros(n, self.dim), requires_grad=requires_grad) for n in sizes[num_frozen:]]
        )
        self.biases = nn.ParameterList(
            [nn.Parameter(ref.new_zeros(n), requires_grad=requires_grad) for n in sizes[num_frozen:]]
            if self.has_bias
            else []
        )
        self.sizes = torch.tensor(sizes, dtype=torch.long, device=self.sizes.device)
        self.num_frozen.fill_(num_frozen)


# Effective pre-activations (``s * (k . x + b)``) at which a key layer asks its block's activation for its value, once
# (see ``MPNLayer._sparse_key``): the activation counts as silent below the largest probe from which it returns exactly
# 0 at that probe and every lower one. GELU (exact and tanh forms) is 0 from -6 on, ReLU everywhere below 0, SiLU only
# from -104 on (its tail is ``z * sigmoid(z)``, 4e-8 at -20).
SILENCE_PROBES: tuple[float, ...] = (
    0.0,
    -1.0,
    -2.0,
    -4.0,
    -6.0,
    -8.0,
    -12.0,
    -16.0,
    -24.0,
    -32.0,
    -64.0,
    -104.0,
    -1e4,
)

_HANDOFF = threading.local()  # per thread: block name -> the _SparsePlan its key layer made in this forward pass


def _native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AMX or AVX512-BF16); asked once."""
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        cpu = getattr(torch, "cpu", None)
        checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        _NATIVE_BF16 = any(bool(check()) for check in checks if check is not None)
    return _NATIVE_BF16


_NATIVE_BF16: bool | None = None


def _plans() -> dict[str, _SparsePlan]:
    plans = getattr(_HANDOFF, "plans", None)
    if plans is None:
        plans = _HANDOFF.plans = {}
    return plans


class _SparsePlan:
    """What a key layer hands to the value layer of its block within one forward pass (see ``MPNLayer.SPARSE``).

    Attributes:
        names: The adapters whose units the key layer computed, with their neuron counts (the value layer checks
            that its banks agree).
        rows: The leading shape of the key layer's output (the value layer checks its input has it).
        index: The patch units the key layer kept (positions among all live patch units, ascending), or None for a
            probe pass.
        width: The width of the key layer's output (base units, kept units, padding, probes).
        state: The key layer's sparse state; a probe pass writes the activation's silence threshold into it.
    """

    __slots__ = ("names", "rows", "index", "width", "state")

    def __init__(
        self,
        names: list[tuple[str, int]],
        rows: torch.Size,
        index: torch.Tensor | None,
        width: int,
        state: dict[str, Any],
    ) -> None:
        self.names, self.rows, self.index, self.width, self.state = names, rows, index, width, state


class MPNLayer(nn.Module, BaseTunerLayer):
    """Wraps one FFN projection (``nn.Linear`` or ``Conv1D``) and adds the patch units of each adapter.

    Args:
        base_layer: The projection to wrap.
        role: ``"key"`` (input projection or gate), ``"up"`` (gated MLP up projection) or ``"value"`` (output
            projection).
        block: Name of the FFN block this projection belongs to; key, up and value wrappers of one block share it.
        adapter_name: The first adapter.
        sizes: Neurons per patch to rebuild (when loading a saved adapter).
        num_frozen: How many of those patches are frozen.
        sharpness: ``MPNConfig.sharpness`` of the first adapter.
        gated: Whether the block is a gated MLP (it has an ``up`` wrapper too); ``None`` if unknown. The key layer
            computes only the patch units that can fire (:attr:`SPARSE`) only where this is ``False``.
    """

    adapter_layer_names: tuple[str, ...] = ("mpn_patches",)
    other_param_names: tuple[str, ...] = ()
    FUSE = True  # join base and patch units into one product when nothing needs a gradient (see _fused_weights)
    ALIGN = 16  # the patched block's width is padded with zero units to a multiple of this (see _padding)
    FUSE_MIN_ROWS = 64  # token rows from which a stale fused weight is rebuilt (see _fused_weights)
    SPARSE = True  # inference: run the value product only on patch units that fire (see _sparse_key)
    SPARSE_MIN_NEURONS = 2048  # live patch units from which the sparse path is taken (see _sparse_key)
    SPARSE_MAX_KEPT = 0.5  # above this share of units kept, the dense product is cheaper (see _sparse_key)
    SCREEN: Literal["auto", "bf16", "fp32"] = "auto"  # how units are screened (see _screen)
    SCREEN_BLOCK = 1024  # keys per block of the bf16 screen (2048 tokens: 54 ms in blocks, 103 ms in one product)

    def __init__(
        self,
        base_layer: nn.Module,
        role: Role,
        block: str,
        adapter_name: str,
        sizes: Sequence[int] = (),
        num_frozen: int = 0,
        sharpness: float = 1.0,
        gated: bool | None = None,
    ) -> None:
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}.")
        self.base_layer = base_layer
        self.role: Role = role
        self.block = block
        self.gated = gated
        self.mpn_patches = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._merged_neurons: dict[str, int] = {}
        self._added_bias = False
        # (adapter name, dict) while MPNModel.capture_activations() records this key layer's pre-activations
        self.capture_to: tuple[str, dict[str, torch.Tensor]] | None = None
        in_features, out_features = layer_features(base_layer)
        self.in_features, self.out_features = in_features, out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, sizes=sizes, num_frozen=num_frozen, sharpness=sharpness)

    # ------------------------------------------------------------------ adapters
    @property
    def patch_dim(self) -> int:
        """Width of each patch row: ``in_features`` for key/up, ``out_features`` for value."""
        return self.out_features if self.role == "value" else self.in_features

    def update_layer(
        self, adapter_name: str, sizes: Sequence[int] = (), num_frozen: int = 0, sharpness: float = 1.0
    ) -> None:
        """Create the patch bank of ``adapter_name`` (empty, or with zero patches of the given sizes)."""
        weight = self.get_base_layer().weight
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        device = None if weight.device.type == "meta" else weight.device
        bank = PatchBank(self.role, self.patch_dim, dtype=dtype, device=device, sharpness=sharpness)
        if sizes:
            bank.resize(sizes, num_frozen)
        self.mpn_patches[adapter_name] = bank
        self.set_adapter(self.active_adapters)

    def bank(self, adapter_name: str) -> PatchBank:
        """The patch bank of ``adapter_name``."""
        if adapter_name not in self.mpn_patches:
            raise KeyError(f"No MPN adapter named {adapter_name!r} on {self.block}; have {list(self.mpn_patches)}.")
        return self.mpn_patches[adapter_name]

    def _live_banks(self) -> Iterator[tuple[str, PatchBank]]:
        for name in self.active_adapters:
            if name in self.mpn_patches and self.mpn_patches[name].num_neurons > 0:
                yield name, self.mpn_patches[name]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        if self.role == "value":
            return self._forward_value(x, *args, **kwargs)
        if self.role == "key":
            _plans().pop(self.block, None)  # a plan from an earlier pass that no value layer consumed
        return self._forward_key(x, *args, **kwargs)

    def _forward_key(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        banks = list(self._live_banks())
        if not banks:
            return self.base_layer(x, *args, **kwargs)
        fused = self._fused_weights([bank for _, bank in banks], x)
        if fused is not None:
            sparse = self._sparse_key(banks, x, *fused)
            return sparse if sparse is not None else F.linear(x, *fused)
        result = self.base_layer(x, *args, **kwargs)
        extras = []
        pad = self._padding(sum(bank.num_neurons for _, bank in banks))
        for name, bank in banks:
            weight = bank.weight()
            units = F.linear(x.to(weight.dtype), weight, bank.bias())
            if self.capture_to is not None and self.capture_to[0] == name:
                self.capture_to[1][self.block] = units  # natural scale: the losses' thresholds refer to it
            if bank.sharpness != 1.0 and self.role == "key":
                units = units * bank.sharpness
            extras.append(units.to(result.dtype))
        if pad:
            extras.append(result.new_zeros(*result.shape[:-1], pad))
        return torch.cat([result, *extras], dim=-1)

    def _forward_value(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        plan = _plans().pop(self.block, None)
        banks = list(self._live_banks())
        if not banks:
            return self.base_layer(x, *args, **kwargs)
        neurons = sum(bank.num_neurons for _, bank in banks)
        if plan is not None and plan.width == x.shape[-1] and plan.rows == x.shape[:-1]:
            if plan.names != [(name, bank.num_neurons) for name, bank in banks]:
                raise RuntimeError(
                    f"MPN value layer of block {self.block!r} has other patches than its key layer "
                    f"({plan.names}); add, remove and freeze patches through MPNModel, not layer by layer."
                )
            fused = self._fused_weights([bank for _, bank in banks], x)
            if fused is not None:
                return self._sparse_value(x, plan, neurons, *fused)
            if plan.index is None:  # a probe pass without fused weights (hooks on this layer): answer, go dense
                x = self._read_probes(x, plan)
            else:
                kept = plan.index.numel()
                values = torch.cat([bank.effective_weight() for _, bank in banks]).index_select(0, plan.index)
                result = self.base_layer(x[..., : self.in_features], *args, **kwargs)
                units = x[..., self.in_features : self.in_features + kept]
                return result + (units.to(values.dtype) @ values).to(result.dtype)
        expected = self.in_features + neurons + self._padding(neurons)
        if expected != x.shape[-1]:
            raise RuntimeError(
                f"MPN value layer of block {self.block!r} got {x.shape[-1]} inputs but expected {expected}: the key "
                "and value wrappers of this block disagree. Add and freeze patches through MPNModel, not layer by "
                "layer."
            )
        fused = self._fused_weights([bank for _, bank in banks], x)
        if fused is not None:
            return F.linear(x, *fused)
        result = self.base_layer(x[..., : self.in_features], *args, **kwargs)
        offset = self.in_features
        for _, bank in banks:
            weight = bank.weight()
            n = weight.shape[0]
            units = x[..., offset : offset + n]
            out = units.to(weight.dtype) @ weight
            if bank.sharpness != 1.0:
                out = out / bank.sharpness
            result = result + out.to(result.dtype)
            offset += n
        return result

    def _padding(self, neurons: int) -> int:
        """Zero units after the patch units, so that the block's width stays a multiple of ``ALIGN``.

        A matrix product whose output width is not a multiple of 16 is markedly slower (measured on e5-small's FFN,
        2048 tokens: width 1537 takes 18 ms, 1536 and 1552 take 14 ms), so one patch would cost 0.7% of the whole
        forward pass. A zero unit adds exactly nothing: ``act(0) = 0`` for the FFN activations MPN supports
        (GELU, ReLU, SiLU), and its value column is zero. Only blocks whose base width is aligned are padded.
        """
        width = self.in_features if self.role == "value" else self.out_features
        if not neurons or not self.ALIGN or width % self.ALIGN:
            return 0
        return -(width + neurons) % self.ALIGN

    # ------------------------------------------------------------------ sparse inference
    def _sparse_key(
        self, banks: list[tuple[str, PatchBank]], x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor | None:
        """The key layer's output with only the patch units that can fire, or None to run the dense product.

        With thousands of frozen patches the patch units cost more than the whole base FFN, yet a patch fires only
        near its edit. Here the key layer computes every patch unit's pre-activation, keeps the units that exceed
        the activation's silence threshold at some token of the batch, and returns ``[base units, kept units,
        padding]``; it hands the kept units' positions to the value layer of its block (a per-thread hand-off
        within the forward pass), which multiplies only their value rows. A unit left out is one whose activation
        is exactly 0 at every token, so it would have added exactly nothing: the outputs equal the dense ones up to
        the order of floating-point sums.

        The threshold comes from the activation itself: the first time, the key layer appends a few probe units with
        fixed pre-activations (:data:`SILENCE_PROBES`) to its (dense) output, and the value layer reads what the
        activation made of them. An activation that is not exactly 0 at any probe (or anything that is not a
        pointwise activation between the two projections) disables the sparse path for the block.

        Taken only when :attr:`SPARSE` is on, the block is known not to be gated (``gated=False``: in a gated MLP
        the up projection would have to keep the same units), the layer is in eval mode, no gradient is needed
        (the fused weights apply), and at least :attr:`SPARSE_MIN_NEURONS` patch units are live.
        """
        if not self.SPARSE or self.gated is not False or self.training or self.role != "key":
            return None
        neurons = sum(bank.num_neurons for _, bank in banks)
        if neurons < self.SPARSE_MIN_NEURONS:
            return None
        state = self.__dict__.setdefault("_sparse_state", {})
        names = [(name, bank.num_neurons) for name, bank in banks]
        rows = x.shape[:-1]
        silent = state.get("silent_below")
        if silent is None:  # first pass: ask the activation where it is silent
            dense = F.linear(x, weight, bias)
            probes = dense.new_tensor(SILENCE_PROBES).expand(*rows, len(SILENCE_PROBES))
            out = torch.cat([dense, probes], dim=-1)
            _plans()[self.block] = _SparsePlan(names, rows, None, out.shape[-1], state)
            return out
        if math.isnan(silent):
            return None
        if state.get("dense_passes", 0) > 0:  # most units fired lately: the dense product is cheaper
            state["dense_passes"] -= 1
            return None
        base = self.out_features
        index = self._screen(x, weight, bias[base : base + neurons], silent)
        kept = state["kept"] = index.numel()  # for diagnostics (benchmarks/inference_overhead.py)
        if kept > self.SPARSE_MAX_KEPT * neurons:
            state["dense_passes"] = 31  # try again in 32 passes
            return None
        pad = self._padding(kept)
        rows_w = [weight[:base], weight[base:].index_select(0, index)]
        rows_b = [bias[:base], bias[base:].index_select(0, index)]
        if pad:
            rows_w.append(weight.new_zeros(pad, weight.shape[1]))
            rows_b.append(bias.new_zeros(pad))
        out = F.linear(x, torch.cat(rows_w), torch.cat(rows_b))
        _plans()[self.block] = _SparsePlan(names, rows, index, out.shape[-1], state)
        return out

    def _screen(self, x: torch.Tensor, fused: torch.Tensor, bias: torch.Tensor, silent: float) -> torch.Tensor:
        """The patch units that may exceed ``silent`` (effective scale) at some row of ``x``, as sorted indices.

        ``fused`` is the key layer's fused weight (base units, then the patch units, then padding) and ``bias``
        the patch units' biases.

        Never leaves out a unit whose pre-activation exceeds ``silent``; may keep some that do not (they are then
        computed exactly and add what they add in the dense product). ``SCREEN="fp32"`` computes every
        pre-activation in float32, as the dense product does, and keeps a unit when its largest one plus
        ``2**-12 |x| |k|`` reaches ``silent`` (two float32 products of other shapes differ by far less:
        ``2 * 384 * 2**-24 |x| |k|`` at 384 inputs). ``"bf16"`` (``"auto"`` on a CPU with native bf16 matrix units,
        AMX or AVX512-BF16) multiplies in bfloat16, ~3x cheaper, and keeps a unit when its largest product plus an
        upper bound of the rounding error reaches ``silent``: for rows ``x`` and ``k`` rounded to ``x'`` and ``k'``,
        ``|x.k - x'.k'| <= |x| |k - k'| + |x - x'| |k'| + 2**-7 |x'| |k'|``, where the last term covers the bf16
        rounding of the product (2**-9) and its float32 accumulation with a wide margin. Both multiply in blocks
        of :attr:`SCREEN_BLOCK` keys, so that each block's products stay in cache for the maximum.
        """
        rows = x.reshape(-1, x.shape[-1])
        base = self.out_features
        weight = fused[base : base + bias.shape[0]]
        if rows.shape[0] == 0:
            return bias.new_zeros(0, dtype=torch.long)
        cached = self.__dict__.get("_screen_cache")
        if cached is None or cached[0]() is not fused:
            with torch.inference_mode(False), torch.no_grad():
                low = weight.to(torch.bfloat16)
                cached = (
                    weakref.ref(fused),
                    low,
                    (weight - low.float()).norm(dim=1),
                    low.float().norm(dim=1),
                    weight.norm(dim=1),
                )
            self.__dict__["_screen_cache"] = cached
        _, low, error, low_norm, norm = cached
        x_norm = rows.norm(dim=1).max()
        if self._screen_dtype(x) != torch.bfloat16:
            biggest = self._blockwise_max(weight, rows)
            return (biggest + bias + 2.0**-12 * x_norm * norm > silent).nonzero().squeeze(1)
        rows_low = rows.to(torch.bfloat16)
        biggest = self._blockwise_max(low, rows_low).float()
        x_error = (rows - rows_low.float()).norm(dim=1).max()
        x_low_norm = rows_low.float().norm(dim=1).max()
        bound = biggest + bias + x_norm * error + (x_error + 2.0**-7 * x_low_norm) * low_norm
        return (bound > silent).nonzero().squeeze(1)

    def _blockwise_max(self, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``(rows @ weight.T).amax(dim=0)``, in blocks of :attr:`SCREEN_BLOCK` rows of ``weight``."""
        columns = rows.T.contiguous()
        step = self.SCREEN_BLOCK
        return torch.cat([(weight[i : i + step] @ columns).amax(dim=1) for i in range(0, weight.shape[0], step)])

    def _screen_dtype(self, x: torch.Tensor) -> torch.dtype:
        if self.SCREEN == "fp32" or x.dtype != torch.float32:
            return torch.float32
        if self.SCREEN == "bf16":
            return torch.bfloat16
        if x.device.type == "cpu" and _native_bf16():
            return torch.bfloat16
        return torch.float32

    @staticmethod
    def _read_probes(x: torch.Tensor, plan: _SparsePlan) -> torch.Tensor:
        """Record where the activation is silent from a probe pass's last columns; return ``x`` without them."""
        probes = len(SILENCE_PROBES)
        seen = x.reshape(-1, x.shape[-1])[:, -probes:]
        silent = float("nan")
        if seen.shape[0]:
            zero = (seen == 0).all(dim=0).tolist()
            for i, value in enumerate(SILENCE_PROBES):  # the highest probe from which every lower one is 0
                if all(zero[i:]):
                    silent = value
                    break
        plan.state["silent_below"] = silent
        return x[..., :-probes]

    def _sparse_value(
        self, x: torch.Tensor, plan: _SparsePlan, neurons: int, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The value product for the units a key layer kept (see :meth:`_sparse_key`), or a probe pass's answer."""
        base = self.in_features
        if plan.index is None:
            return F.linear(self._read_probes(x, plan), weight, bias)
        kept = plan.index.numel()
        pad = x.shape[-1] - base - kept
        cols = [weight[:, :base], weight[:, base : base + neurons].index_select(1, plan.index)]
        if pad:
            cols.append(weight.new_zeros(weight.shape[0], pad))
        return F.linear(x, torch.cat(cols, dim=1), bias)

    # ------------------------------------------------------------------ fused inference weights
    def _fused_weights(
        self, banks: list[PatchBank], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The base projection with every live patch unit appended, as one ``F.linear`` weight and bias; cached.

        With patches, the plain forward runs the base projection and the patch units as separate products and joins
        them (a copy of the whole FFN activation per call). When nothing needs a gradient, the joined weight is
        built once (exactly the weight :meth:`merge` would make) and reused until a patch or the base weight
        changes, so a patched FFN costs one matrix product, as a merged one does. Returns None where that does not
        apply: a gradient is needed, pre-activations are being captured, the dtypes differ, the base layer is not a
        plain ``nn.Linear``/``Conv1D`` (hooks, meta weights), or the cache is stale and the input has fewer than
        ``FUSE_MIN_ROWS`` rows (an edit's few texts: rebuilding costs more than the separate products).
        """
        if self.capture_to is not None or not self.FUSE:
            return None
        base = self.get_base_layer()
        if not isinstance(base, (nn.Linear, Conv1D)) or base._forward_hooks or base._forward_pre_hooks:
            return None
        if getattr(base, "_hf_hook", None) is not None or base.weight.device.type == "meta":
            return None
        tensors = [base.weight, base.bias]
        for bank in banks:
            tensors += [bank.frozen_weight, bank.frozen_bias, *bank.weights, *bank.biases]
        tensors = [t for t in tensors if t is not None]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return None
        if any(t.dtype != base.weight.dtype for t in tensors):
            return None
        # Tensors are held weakly and compared by identity, version (in-place changes), storage, dtype and shape,
        # so any change to a patch or to the base weight rebuilds the cache, and the cache pins no old tensor.
        state = [(t._version, t.data_ptr(), t.device, t.dtype, t.shape) for t in tensors]
        state.append(tuple(bank.sharpness for bank in banks))
        cached = self.__dict__.get("_fused_cache")
        if (
            cached is not None
            and len(cached[0]) == len(tensors)
            and all(ref() is t for ref, t in zip(cached[0], tensors))
            and cached[1] == state
        ):
            return cached[2], cached[3]
        if x.numel() < self.FUSE_MIN_ROWS * x.shape[-1]:
            return None
        with torch.inference_mode(False), torch.no_grad():
            weight = base.weight.T if isinstance(base, Conv1D) else base.weight
            bias = base.bias
            pad = self._padding(sum(bank.num_neurons for bank in banks))
            if self.role == "value":
                zeros = weight.new_zeros(weight.shape[0], pad)
                weight = torch.cat([weight, *(bank.effective_weight().T for bank in banks), zeros], dim=1)
            else:
                if bias is None:
                    bias = weight.new_zeros(weight.shape[0])
                zeros = weight.new_zeros(pad, weight.shape[1])
                weight = torch.cat([weight, *(bank.effective_weight() for bank in banks), zeros], dim=0)
                bias = torch.cat([bias, *(bank.effective_bias() for bank in banks), bias.new_zeros(pad)])
            weight = weight.contiguous()
        self.__dict__["_fused_cache"] = ([weakref.ref(t) for t in tensors], state, weight, bias)
        return weight, bias

    # ------------------------------------------------------------------ merge
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Append the patch units of the active (or given) adapters to the base projection. Exact."""
        names = [n for n in (adapter_names or self.active_adapters) if n in self.mpn_patches]
        base = self.get_base_layer()
        for name in names:
            if name in self.merged_adapters:
                continue
            bank = self.mpn_patches[name]
            weight = bank.effective_weight().detach()
            if safe_merge and not torch.isfinite(weight).all():
                raise ValueError(f"MPN adapter {name!r} has non-finite patch weights on {self.block}; not merged.")
            if self.role == "value":
                append_input_units(base, weight)
            else:
                self._added_bias = self._added_bias or base.bias is None
                append_output_units(base, weight, bank.effective_bias().detach())
            self._merged_neurons[name] = weight.shape[0]
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Remove merged patch units from the base projection, newest adapter first. Exact."""
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            n = self._merged_neurons.pop(name)
            if self.role == "value":
                truncate_input_units(base, n)
            else:
                last = not self.merged_adapters
                truncate_output_units(base, n, drop_bias=last and self._added_bias)
                if last:
                    self._added_bias = False

    def __repr__(self) -> str:
        return "mpn." + super().__repr__()
