"""The fast path for generation edits: a last-layer patch of a causal LM trained on cached states.

A patch in the last transformer layer changes only that layer's FFN output, which is added to the residual stream
and then goes through the final norm and the LM head. Everything else is fixed during an edit, so
:class:`LMSuffix` caches a few tensors per position with one forward pass:

- ``x``, the input of the patched FFN (what the key reads), and
- ``z``, the input of the final norm (the last layer's output without the new patch),

and each training step computes only ``logits = head(norm(z + delta))`` with
``delta = V^T act(s (K x + b)) [* (U x + c)] / s`` at the target positions (``s`` is the adapter's ``sharpness``, 1
for the plain FFN unit), and ``K x + b`` at the memory positions.

Architectures that normalise the MLP output before the residual add (Gemma 2 and 3: ``post_feedforward_layernorm``)
need one more tensor: ``m``, the MLP output without the new patch. Then ``z`` holds the residual stream without the
MLP's contribution, ``r = z_final - post_norm(m)`` (kept in float32, so that ``r + post_norm(m)`` gives the cached
``z_final`` back exactly), and a step computes ``head(norm(r + post_norm(m + delta)))``. A final logit soft-cap
(``config.final_logit_softcapping``, Gemma 2) is applied after the head as the model does.

The FT-L and LoRA baselines train the patched layer's MLP itself (``whole_mlp=True``): then ``m``, the MLP's output, is
cached for every architecture, ``z`` holds the residual stream without it, and a step computes
``head(norm(r + post_norm(mlp(x))))`` (``post_norm`` the identity where the layer has none) with the MLP module's own
forward, through its (LoRA-wrapped or fine-tuned) projections.

`CausalLMEditor` checks this against the full model on its first edit and falls back to the full model if they
disagree.

Supported (each tested against the full model): GPT-2, LLaMA, Qwen2, Mistral, BLOOM, Gemma 3 and Gemma 2, and
other decoders whose final norm and post-MLP norm (if any) are found by name and whose MLP keeps its activation in
``act_fn``, ``act``, ``activation_fn`` or ``gelu_impl``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...editing.fastpath import FastPathUnsupported
from ...tuner.model import layer_index
from .collator import pad_right
from .generate import evaluating, model_device


FINAL_NORMS = ("model.norm", "transformer.ln_f", "model.final_layernorm", "gpt_neox.final_layer_norm", "norm")
ACTIVATIONS = ("act_fn", "act", "activation_fn", "gelu_impl", "activation")
#: Norms that a decoder layer applies to its MLP output before the residual add (Gemma 2 and 3, OLMo 2).
POST_FFN_NORMS = ("post_feedforward_layernorm",)


class _Stop(Exception):
    """Ends a forward pass once the FFN input is captured."""


class NotLastLayer(FastPathUnsupported):
    """`LMSuffix` needs the patch in the last layer; `LMLayerSuffix` runs a patch below it."""


@dataclass
class CachedStates:
    """Cached states of a batch of sequences.

    Attributes:
        x: ``(batch, tokens, d_in)`` inputs of the patched FFN.
        z: ``(batch, tokens, d_model)`` inputs of the final norm, or ``None`` (memory texts need only ``x``). With a
            post-MLP norm: the residual stream without the MLP's contribution, in float32.
        mask: ``(batch, tokens)`` attention mask.
        m: ``(batch, tokens, d_model)`` the patched MLP's output without the new patch, where the layer normalises
            it before the residual add (else ``None``).
        ids: ``(batch, tokens)`` the token ids (:class:`LMLayerSuffix`, which reruns the layers from the patched one).
        h: ``(batch, tokens, d_model)`` the input of the patched layer (:class:`LMLayerSuffix`).
    """

    x: torch.Tensor
    z: torch.Tensor | None
    mask: torch.Tensor
    m: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    h: torch.Tensor | None = None


def _find(module: nn.Module, names: Sequence[str]) -> nn.Module | None:
    for name in names:
        with contextlib.suppress(AttributeError):
            return module.get_submodule(name)
    return None


class _NewestPatch:
    """The newest patch's tensors and its pre-activations on cached FFN inputs (both suffixes)."""

    parts: dict[str, nn.Module]
    adapter_name: str

    def _bind(self, model: nn.Module, parts: dict[str, nn.Module], adapter_name: str) -> tuple[nn.Module, str]:
        """Keep the model, the patch's wrappers and the adapter; return the base model and the key module's name."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model, self.parts, self.adapter_name = model, parts, adapter_name
        key_name = {id(m): n for n, m in base.named_modules()}.get(id(parts["key"]))
        if key_name is None:
            raise FastPathUnsupported("the patched key module is not part of the model; pass fast=False.")
        return base, key_name

    def newest(self) -> dict[str, torch.Tensor]:
        """The trainable tensors of the newest patch: ``key``, ``bias``, ``value`` and, for gated MLPs, ``up``,
        ``up_bias``."""
        key = self.parts["key"].bank(self.adapter_name)
        value = self.parts["value"].bank(self.adapter_name)
        if len(key.weights) == 0:
            raise ValueError("the newest patch is frozen (or there is none): add_patch() before training it.")
        tensors = {"key": key.weights[-1], "bias": key.biases[-1], "value": value.weights[-1]}
        if "up" in self.parts:
            up = self.parts["up"].bank(self.adapter_name)
            tensors.update(up=up.weights[-1], up_bias=up.biases[-1])
        return tensors

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``K x + b`` of the newest patch: ``(..., n)``."""
        patch = self.newest()
        return x.to(patch["key"].dtype) @ patch["key"].T + patch["bias"]


class LMSuffix(_NewestPatch):
    """Runs a causal LM from its last FFN block on cached states.

    Args:
        model: The ``PeftModel`` whose adapter patches one FFN block (or, with ``whole_mlp``, the model whose last
            MLP a baseline trains: plain, or wrapped by LoRA).
        parts: That block's wrappers, ``{"key": MPNLayer, "value": MPNLayer, ("up": MPNLayer)}``; with
            ``whole_mlp`` only ``{"key": the MLP's input projection}`` is needed.
        adapter_name: The adapter being edited.
        whole_mlp: Train the whole MLP (FT-L, LoRA) rather than a new patch: :meth:`mlp_logits` runs the MLP module
            on the cached inputs.

    Raises:
        FastPathUnsupported: If the patch is not in the last layer, or no final norm, head or activation is found,
            or (``whole_mlp``) the MLP's forward takes more than its input (BLOOM's takes the residual too).

    Example:
        >>> suffix = LMSuffix(peft_model, peft_model.patch_blocks()[block], "default")  # doctest: +SKIP
        >>> states = suffix.capture([edit.ids])  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        parts: dict[str, nn.Module],
        adapter_name: str = "default",
        *,
        whole_mlp: bool = False,
    ) -> None:
        base, key_name = self._bind(model, parts, adapter_name)
        self.whole_mlp = whole_mlp
        index = layer_index(key_name)
        depth = key_name.count(".")
        indices = {layer_index(n) for n, _ in base.named_modules() if n.count(".") == depth}
        last = max((i for i in indices if i is not None), default=-1)
        if index is None or index != last:
            raise NotLastLayer(
                f"the generation fast path needs the patch in the last layer, but {key_name!r} is not; pass "
                "fast=False."
            )
        self.norm = _find(base, FINAL_NORMS)
        self.head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        mlp_name = key_name.rpartition(".")[0]
        mlp = base.get_submodule(mlp_name)
        self.mlp = mlp
        layer = base.get_submodule(mlp_name.rpartition(".")[0])
        if whole_mlp:
            required = [
                p
                for p in inspect.signature(mlp.forward).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if len(required) != 1:
                raise FastPathUnsupported(
                    f"no baseline fast path for {type(mlp).__name__}: its forward takes {len(required)} inputs, not "
                    "just the hidden states; pass fast=False."
                )
        self.post_norm: nn.Module | None = next(
            (getattr(layer, n) for n in POST_FFN_NORMS if isinstance(getattr(layer, n, None), nn.Module)), None
        )
        softcap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)
        self.softcap: float | None = float(softcap) if softcap else None
        self.act: Callable[[torch.Tensor], torch.Tensor] | None = None
        for attr in ACTIVATIONS:
            candidate = getattr(mlp, attr, None)
            if callable(candidate):
                self.act = candidate
                break
        missing = [
            what
            for what, found in (("final norm", self.norm), ("LM head", self.head), ("MLP activation", self.act))
            if found is None
        ]
        if missing:
            raise FastPathUnsupported(f"no fast path for {type(base).__name__}: no {', '.join(missing)} found.")

    # ------------------------------------------------------------------ caching
    def capture(
        self, sequences: Sequence[Sequence[int]], pad_id: int = 0, *, with_z: bool = True, batch_size: int = 32
    ) -> CachedStates:
        """Cache ``x`` (and ``z``) of token-id sequences, right-padded; one forward pass per chunk.

        Without ``z`` the pass stops at the patched FFN.
        """
        ids, mask = pad_right(sequences, pad_id)
        device = model_device(self.model)
        xs: list[torch.Tensor] = []
        zs: list[torch.Tensor] = []
        ms: list[torch.Tensor] = []

        def grab_x(_module: nn.Module, args: tuple) -> None:
            xs.append(args[0].detach())
            if not with_z:
                raise _Stop

        def grab_z(_module: nn.Module, args: tuple) -> None:
            zs.append(args[0].detach())

        def grab_m(_module: nn.Module, args: tuple) -> None:
            ms.append(args[0].detach())

        def grab_mlp_output(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            ms.append(output.detach())

        handles = [self.parts["key"].register_forward_pre_hook(grab_x)]
        if with_z:
            handles.append(self.norm.register_forward_pre_hook(grab_z))
            if self.post_norm is not None:
                handles.append(self.post_norm.register_forward_pre_hook(grab_m))
            elif self.whole_mlp:
                handles.append(self.mlp.register_forward_hook(grab_mlp_output))
        try:
            with evaluating(self.model):
                for start in range(0, ids.shape[0], batch_size):
                    with contextlib.suppress(_Stop):
                        self.model(
                            input_ids=ids[start : start + batch_size].to(device),
                            attention_mask=mask[start : start + batch_size].to(device),
                        )
        finally:
            for handle in handles:
                handle.remove()
        x = torch.cat(xs) if xs else torch.zeros(0, ids.shape[1], self.parts["key"].in_features)
        z = torch.cat(zs) if with_z and zs else None
        m = torch.cat(ms) if with_z and ms else None
        if m is not None and z is not None:
            with torch.no_grad():  # the residual without the MLP's part; float32 so that r + post_norm(m) == z
                z = z.float() - self._post(m).float()
        return CachedStates(x, z, mask.to(x.device), m)

    def _post(self, m: torch.Tensor) -> torch.Tensor:
        """The MLP output as the layer adds it to the residual: through the post-MLP norm where there is one."""
        return m if self.post_norm is None else self.post_norm(m)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.norm(hidden))
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def mlp_logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits with the MLP as it is now (FT-L, LoRA: ``whole_mlp``) at positions with cached ``x`` and ``z``.

        Args:
            x: ``(..., d_in)`` MLP inputs.
            z: ``(..., d_model)`` the residual stream without the MLP's contribution (:class:`CachedStates` of a
                ``whole_mlp`` suffix), float32.

        Returns:
            ``(..., vocab)`` logits: ``head(norm(z + post_norm(mlp(x))))``.
        """
        if not self.whole_mlp:
            raise ValueError("LMSuffix.mlp_logits needs a suffix built with whole_mlp=True (the FT-L/LoRA fast path).")
        out = self.mlp(x)
        return self._head((z + self._post(out).float()).to(out.dtype))

    # ------------------------------------------------------------------ the newest patch
    def logits(
        self, x: torch.Tensor, z: torch.Tensor, m: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits with the newest patch at positions with states ``x``, ``z`` (and ``m``), and its pre-activations.

        Args:
            x: ``(..., d_in)`` FFN inputs.
            z: ``(..., d_model)`` final-norm inputs without the newest patch; with a post-MLP norm, the residual
                stream without the MLP's part (:class:`CachedStates`).
            m: ``(..., d_model)`` the MLP outputs without the newest patch; required exactly when the layer has a
                post-MLP norm.

        Returns:
            ``(logits (..., vocab), pre-activations (..., n))``.

        Raises:
            ValueError: If ``m`` is missing for a model with a post-MLP norm, or given for one without.
        """
        if (m is None) != (self.post_norm is None):
            raise ValueError(
                "LMSuffix.logits needs m (the cached MLP outputs) exactly when the patched layer has a post-MLP "
                f"norm; this one {'has' if self.post_norm is not None else 'has none'}: pass CachedStates.m."
            )
        patch = self.newest()
        x = x.to(patch["key"].dtype)
        pre = x @ patch["key"].T + patch["bias"]
        # a unit is (v / s) * act(s * pre) [* up] with the bank's sharpness s (1 = the plain FFN unit)
        sharpness = float(getattr(self.parts["key"].bank(self.adapter_name), "sharpness", 1.0))
        units = self.act(pre * sharpness) if sharpness != 1.0 else self.act(pre)
        if "up" in patch:
            units = units * (x @ patch["up"].T + patch["up_bias"])
        delta = units @ patch["value"]
        if sharpness != 1.0:
            delta = delta / sharpness
        if m is None:
            hidden = z + delta.to(z.dtype)
        else:
            hidden = (z + self.post_norm(m + delta.to(m.dtype)).float()).to(m.dtype)
        return self._head(hidden), pre


class _Replay(nn.Module):
    """Stands in for a decoder layer below the patched one: returns that layer's cached output."""

    def __init__(self, output: object) -> None:
        super().__init__()
        self.output = output

    def forward(self, *_args: object, **_kwargs: object) -> object:
        return self.output


class LMLayerSuffix(_NewestPatch):
    """Runs a causal LM from a patched layer below the last one, on the cached input of that layer.

    A patch deeper in the network leaves every layer above it to turn its change into tokens, in each prompt's
    language. Nothing below the patched layer changes during an edit, so its input ``h`` is cached once per edit
    (:meth:`capture`); each step reruns the model with the layers below the patched one swapped for modules that
    return ``h`` (:class:`_Replay`), so that the model's own embeddings, attention masks (causal, sliding window) and
    rotary position embeddings are used as they are, and the LM head runs only at the target positions
    (``logits_to_keep``). The memory needs only the patched FFN's input, as in :class:`LMSuffix`.

    Args:
        model: The ``PeftModel`` whose adapter patches one FFN block, in any layer but the first.
        parts: That block's wrappers (``{"key": MPNLayer, "value": MPNLayer, ("up": MPNLayer)}``).
        adapter_name: The adapter being edited.

    Raises:
        FastPathUnsupported: If the patch is in the first layer, or its layers are not an ``nn.ModuleList``.

    Example:
        >>> suffix = LMLayerSuffix(peft_model, peft_model.patch_blocks()[block], "default")  # doctest: +SKIP
        >>> states = suffix.capture([edit.ids])  # doctest: +SKIP
        >>> logits, pre = suffix.run(states, [0], [[4, 5]])  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, parts: dict[str, nn.Module], adapter_name: str = "default") -> None:
        base, key_name = self._bind(model, parts, adapter_name)
        index = layer_index(key_name)
        if index is None:
            raise FastPathUnsupported("the patched key module is not in a numbered layer; pass fast=False.")
        if index == 0:
            raise FastPathUnsupported("the layer fast path needs the patch above the first layer; pass fast=False.")
        container = key_name[: key_name.index(f".{index}.")]
        layers = base.get_submodule(container)
        if not isinstance(layers, nn.ModuleList):
            raise FastPathUnsupported(f"{container!r} is not an nn.ModuleList of layers; pass fast=False.")
        self.layers = layers
        self.index = index
        self.block = getattr(parts["key"], "block", None)
        self.keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        self._tuple = 0  # the length of the layers' output tuple, 0 for a plain tensor (set by capture)

    def capture(
        self, sequences: Sequence[Sequence[int]], pad_id: int = 0, *, with_z: bool = True, batch_size: int = 32
    ) -> CachedStates:
        """Cache ``x`` (the patched FFN's input) and, with ``with_z``, ``h`` (the patched layer's input) and the ids.

        Each forward pass stops at the patched FFN.
        """
        ids, mask = pad_right(sequences, pad_id)
        device = model_device(self.model)
        xs: list[torch.Tensor] = []
        hs: list[torch.Tensor] = []

        def grab_x(_module: nn.Module, args: tuple) -> None:
            xs.append(args[0].detach())
            raise _Stop

        def grab_h(_module: nn.Module, _args: tuple, output: object) -> None:
            # BLOOM's blocks return a tuple (hidden states first), most decoders' the hidden states alone
            self._tuple = len(output) if isinstance(output, tuple) else 0
            hs.append((output[0] if isinstance(output, tuple) else output).detach())

        handles = [self.parts["key"].register_forward_pre_hook(grab_x)]
        if with_z:
            handles.append(self.layers[self.index - 1].register_forward_hook(grab_h))
        try:
            with evaluating(self.model), torch.no_grad():
                for start in range(0, ids.shape[0], batch_size):
                    with contextlib.suppress(_Stop):
                        self.model(
                            input_ids=ids[start : start + batch_size].to(device),
                            attention_mask=mask[start : start + batch_size].to(device),
                            use_cache=False,
                        )
        finally:
            for handle in handles:
                handle.remove()
        x = torch.cat(xs) if xs else torch.zeros(0, ids.shape[1], self.parts["key"].in_features)
        if not with_z:
            return CachedStates(x, None, mask.to(x.device))
        return CachedStates(x, None, mask.to(x.device), ids=ids.to(x.device), h=torch.cat(hs))

    @contextlib.contextmanager
    def _replaying(self, hidden: torch.Tensor):
        """The layers below the patched one return ``hidden`` instead of computing it."""
        saved = [self.layers[i] for i in range(self.index)]
        output = (hidden, *[None] * (self._tuple - 1)) if self._tuple else hidden
        try:
            for i in range(self.index):
                self.layers[i] = _Replay(output)
            yield
        finally:
            for i, layer in enumerate(saved):
                self.layers[i] = layer

    def run(
        self, states: CachedStates, rows: Sequence[int], positions: Sequence[Sequence[int]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Logits and the newest patch's pre-activations at the given positions of cached rows.

        Args:
            states: What :meth:`capture` cached (with ``with_z``).
            rows: The rows of ``states`` to run.
            positions: For each row, the positions whose logits (and pre-activations) to return.

        Returns:
            ``(logits, pre)``: per row, ``(len(positions[i]), vocab)`` logits and ``(len(positions[i]), n)``
            pre-activations of the newest patch's ``n`` neurons.

        Raises:
            ValueError: If ``states`` holds no layer inputs (captured without ``with_z``).
        """
        if states.h is None or states.ids is None:
            raise ValueError("LMLayerSuffix.run needs states captured with with_z=True (the patched layer's input).")
        index = torch.as_tensor(list(rows), dtype=torch.long, device=states.h.device)
        keep = sorted({int(p) for ps in positions for p in ps})
        kwargs = {"logits_to_keep": torch.tensor(keep, device=states.h.device)} if self.keeps_logits else {}
        n_new = self.newest()["key"].shape[0]
        with self._replaying(states.h[index]), self.model.capture_activations(self.adapter_name) as captured:
            out = self.model(input_ids=states.ids[index], attention_mask=states.mask[index], use_cache=False, **kwargs)
        logits = out.logits
        pre = captured[self.block][..., -n_new:]
        column = {p: i for i, p in enumerate(keep)} if self.keeps_logits else None
        logits_by, pre_by = [], []
        for row, ps in enumerate(positions):
            at = torch.as_tensor(list(ps), dtype=torch.long, device=logits.device)
            cols = at if column is None else torch.as_tensor([column[int(p)] for p in ps], device=logits.device)
            logits_by.append(logits[row, cols])
            pre_by.append(pre[row, at])
        return logits_by, pre_by
