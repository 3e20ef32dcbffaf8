"""What an edit changes, per method: MPN patches, or the FT-L and LoRA baselines.

Each strategy prepares the model, says which parameters an edit trains, and saves/loads its edited state. The
editor (`peft_mpn.editor`) drives all of them the same way, so comparing methods is one argument.

- ``mpn`` / ``tpatcher``: a new patch neuron per edit (MPN trains it on the translations too).
- ``ft``: FT-L, fine-tune the weights of the patched layer's FFN on the edit examples, within a norm bound.
- ``lora``: one LoRA adapter (peft) on the same FFN projections, trained further on every edit.
- ``grace``: a GRACE-style codebook at the same FFN block (`peft_mpn.editing.grace`): one key per edit, a
  deferral radius, and a value that replaces the FFN output projection's output within the radius.

FT-L and LoRA run as the literature runs them (`BaselineConfig`): the same stop rule as the patches (stop once the
edit is right in every training language), a small learning rate, a few steps, FT-L's L-infinity bound on how far a
weight moves in one edit, and optionally replay of memory texts whose predictions must not change. The defaults were
chosen on the validation split (docs/benchmark.md, "Fair baselines").
"""

from __future__ import annotations

import contextlib
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

from ..tuner.config import MPNConfig
from ..tuner.model import plan_blocks
from ..utils.checks import is_int, is_real, non_finite
from .grace import GraceCodebook, GraceConfig


METHODS = ("mpn", "tpatcher", "ft", "lora", "grace")


@dataclass
class BaselineConfig:
    """How FT-L and LoRA edit. The defaults are FT-L's, chosen on the validation split (docs/benchmark.md);
    ``BaselineConfig.for_method("lora")`` gives LoRA's, which the editor uses when no config is given.

    Args:
        lr: Adam learning rate of the edited weights (FT-L) or LoRA factors.
        max_steps: Step cap per edit; an edit also stops as soon as it is right in every training language (the
            patches' stop rule without a patch).
        norm_constraint: FT-L: no weight moves more than this (L-infinity) from its value at the start of the edit
            (ROME's FT-L constraint); ``None`` for no bound. LoRA ignores it.
        replay: Memory texts replayed per edit: their predicted distribution before the edit is a target (KL) while
            the edit trains, so the edit keeps them. 0 for none. Applies on the fast path with ``position="cls"``
            (elsewhere it is skipped, with a warning).
        replay_weight: Weight of the replay loss.
        rank: LoRA rank (``lora_alpha`` is twice it).
        weight_decay: AdamW weight decay (0: pretrained weights are not pulled towards 0).
        seed: Seeds the LoRA initialisation and the replay sample.
    """

    lr: float = 1e-4
    max_steps: int = 20
    norm_constraint: float | None = 5e-4
    replay: int = 64
    replay_weight: float = 1.0
    rank: int = 8
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("lr", "replay_weight", "weight_decay"):
            value = getattr(self, name)
            if not is_real(value) or value < 0 or (name == "lr" and value == 0):
                raise ValueError(
                    f"BaselineConfig.{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, "
                    f"got {value!r}."
                )
        if self.norm_constraint is not None and (not is_real(self.norm_constraint) or self.norm_constraint <= 0):
            raise ValueError(f"BaselineConfig.norm_constraint must be > 0 or None, got {self.norm_constraint!r}.")
        for name, least in (("max_steps", 1), ("replay", 0), ("rank", 1), ("seed", None)):
            if not is_int(getattr(self, name), least):
                bound = "" if least is None else f" >= {least}"
                raise ValueError(f"BaselineConfig.{name} must be an int{bound}, got {getattr(self, name)!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def for_method(cls, method: str, **overrides: Any) -> BaselineConfig:
        """The settings chosen on the validation split for ``"ft"`` (the dataclass defaults) or ``"lora"``."""
        return cls(**{**TUNED.get(method, {}), **overrides})


#: Chosen on the validation split (docs/benchmark.md, "Fair baselines"): FT-L keeps the dataclass defaults.
TUNED: dict[str, dict[str, Any]] = {
    "ft": {},
    "lora": {"lr": 1e-3, "max_steps": 20, "norm_constraint": None, "replay": 0},
}


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _is_mpn(model: nn.Module) -> bool:
    return isinstance(model, PeftModel) and all(str(c.peft_type) == "MPN" for c in model.peft_config.values())


def locate_ffn(model: nn.Module, config: MPNConfig | None = None) -> tuple[str, dict[str, str]]:
    """The FFN block an edit targets (by default the last layer's) and its module names by role."""
    config = config or MPNConfig()
    base = _base(model)
    if not config.has_roles:
        config.apply_preset(getattr(getattr(base, "config", None), "model_type", None))
    blocks = plan_blocks(config, base)
    if len(blocks) != 1:
        raise ValueError(
            f"the editor edits one FFN block, but the config selects {len(blocks)}: {sorted(blocks)}. Set "
            "layers_to_transform to a single layer."
        )
    block, parts = next(iter(blocks.items()))
    return block, {role: name for role, (name, _) in parts.items()}


def _locate_wrapped_ffn(model: PeftModel) -> tuple[str, dict[str, str]]:
    """`locate_ffn` for a PeftModel whose FFN projections another tuner (LoRA) wraps already, found by name."""
    base = model.get_base_model()
    config = MPNConfig()
    config.apply_preset(getattr(getattr(base, "config", None), "model_type", None))
    blocks: dict[str, dict[str, str]] = {}
    for name, module in base.named_modules():
        excluded = any(name == x or name.endswith("." + x) for x in config.exclude_modules or [])
        role = config.role_of(name)
        if isinstance(module, BaseTunerLayer) and role is not None and not excluded:
            blocks.setdefault(config.block_of(name), {})[role] = name
    if len(blocks) != 1 or not {"key", "value"} <= set(next(iter(blocks.values()))):
        raise ValueError(
            f"the {type(model).__name__} must wrap the key and value projections of one FFN block, but it wraps "
            f"{blocks}; pass the plain transformers model instead and let LoRAStrategy wrap it."
        )
    return next(iter(blocks.items()))


def check_finite_input(hidden: torch.Tensor, record_id: str) -> None:
    """``ValueError`` if the edited FFN block's input for a record is NaN or infinite (a broken base model)."""
    if not bool(torch.isfinite(hidden).all()):
        raise ValueError(
            f"edit record {record_id!r}: the model's input to the edited FFN block is NaN or infinite, so a layer "
            "below it holds non-finite weights (or the input overflows); repair or reload the base model."
        )


class Strategy(ABC):
    """Base class: what one editing method changes."""

    name = "base"
    uses_patch = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.block, self.modules = locate_ffn(model)

    @property
    def key_module(self) -> nn.Module:
        """The module whose input is the FFN input (for caching)."""
        return _base(self.model).get_submodule(self.modules["key"])

    @abstractmethod
    def begin(self, record_id: str, ffn_input: torch.Tensor, config: Any) -> list[nn.Parameter]:
        """Prepare one edit; returns the parameters to train."""

    @abstractmethod
    def end(self) -> None:
        """Finish one edit."""

    @abstractmethod
    def abort(self) -> None:
        """Undo :meth:`begin` for a probe that must leave the model unchanged."""

    def discard(self) -> None:
        """Roll back an edit that failed mid-training (e.g. a NaN loss): the model is as before :meth:`begin`."""
        self.abort()

    @contextlib.contextmanager
    def unedited(self) -> Iterator[nn.Module]:
        """The model as it was before any edit, inside the block (the reference of locality checks).

        Adapters (MPN patches, LoRA) are disabled; FT-L swaps its original weights in for the block.
        """
        if isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model

    def newest_patch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Key weight ``(n, in)`` and bias ``(n,)`` of the patch being trained, if the method has one."""
        return None

    def value_parameters(self) -> list[nn.Parameter]:
        """The trained parameters that are patch values (trained at a larger learning rate)."""
        return []

    def note_edit(self, result: Any, languages: list[str]) -> None:
        """Record what an edit did (methods that keep one unit per edit, so it can be listed and undone)."""
        return None

    def optim_settings(self, config: Any) -> tuple[float, float, int]:
        """Learning rate, weight decay and step cap of an edit (the patches: those of ``EditConfig``)."""
        return config.lr, config.weight_decay, config.max_steps

    def after_step(self) -> None:
        """Called after each optimiser step (FT-L projects its weights back into the norm bound)."""
        return None

    @property
    def replay(self) -> int:
        """Memory texts replayed per edit (baselines; 0 for the patches, whose memory loss plays that part)."""
        return 0

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> None:
        """Save the edited state."""

    @abstractmethod
    def load(self, directory: str | os.PathLike) -> None:
        """Restore the edited state saved by :meth:`save`."""


class PatchStrategy(Strategy):
    """MPN and Transformer-Patcher: one new patch neuron per edit, frozen afterwards."""

    name = "mpn"
    uses_patch = True

    def __init__(self, model: nn.Module, adapter_name: str = "default") -> None:
        if not _is_mpn(model):
            raise TypeError(
                "method='mpn' needs a PeftModel with an MPN adapter: get_peft_model(model, MPNConfig(...)), or pass "
                "the plain model and let MPNEditor wrap it."
            )
        self.model = model
        self.adapter_name = adapter_name
        blocks = model.patch_blocks(adapter_name)
        if len(blocks) != 1:
            raise ValueError(
                f"MPNEditor trains one FFN block per patch, but the adapter patches {len(blocks)}: {sorted(blocks)}. "
                "Use MPNConfig(layers_to_transform=[L]) with a single layer."
            )
        self.block, self.parts = next(iter(blocks.items()))
        self.modules = {}

    @property
    def key_module(self) -> nn.Module:
        return self.parts["key"]

    def begin(self, record_id: str, ffn_input: torch.Tensor, config: Any) -> list[nn.Parameter]:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + zlib.crc32(record_id.encode()))
        width = self.parts["value"].out_features
        value = torch.randn(width, generator=generator) * config.value_init_std / width**0.5
        h = ffn_input.detach().float()
        check_finite_input(h, record_id)
        key = h / h.norm().clamp_min(1e-8) ** 2  # Transformer-Patcher: pre-activation 1 on the edit input
        self.model.add_patch(key=key, bias=0.0, value=value, adapter_name=self.adapter_name, edit_id=record_id)
        return self.model.patch_parameters(self.adapter_name, newest_only=True)

    def note_edit(self, result: Any, languages: list[str]) -> None:
        """Write the edit's languages, steps, seconds, UTC time, success and method into the adapter config."""
        if not any(result.id in ids for ids in self.model.peft_config[self.adapter_name].patch_ids.values()):
            return  # no patch of this id (e.g. a skipped record)
        self.model.record_edit(
            result.id,
            adapter_name=self.adapter_name,
            languages=list(languages),
            steps=int(result.steps),
            seconds=round(float(result.seconds), 4),
            time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            success=bool(result.success),
            method=result.method,
        )

    def newest_patch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        bank = self.parts["key"].bank(self.adapter_name)
        if len(bank.weights) == 0:
            return None
        return bank.weights[-1], bank.biases[-1]

    def value_parameters(self) -> list[nn.Parameter]:
        bank = self.parts["value"].bank(self.adapter_name)
        return list(bank.weights)[-1:]

    def end(self) -> None:
        self.model.freeze_patches(self.adapter_name)

    def abort(self) -> None:
        self.model.pop_patch(self.adapter_name)

    def save(self, directory: str | os.PathLike) -> None:
        self.model.save_pretrained(str(directory), selected_adapters=[self.adapter_name])

    def load(self, directory: str | os.PathLike) -> None:
        path = Path(directory)
        if self.adapter_name != "default":
            path = path / self.adapter_name
        self.model.load_adapter(str(path), adapter_name=self.adapter_name, is_trainable=True)
        self.model.set_adapter(self.adapter_name)


class _BaselineStrategy(Strategy):
    """What FT-L and LoRA share: their `BaselineConfig`."""

    baseline: BaselineConfig

    def optim_settings(self, config: Any) -> tuple[float, float, int]:
        return self.baseline.lr, self.baseline.weight_decay, self.baseline.max_steps

    @property
    def replay(self) -> int:
        return self.baseline.replay


class FTLStrategy(_BaselineStrategy):
    """FT-L: fine-tune the FFN weights of the edited layer (the key and value projections) on the edit.

    With ``baseline.norm_constraint`` each weight stays within that L-infinity distance of its value at the start of
    the edit (projected after every step), as ROME's FT-L does.
    """

    name = "ft"

    def __init__(self, model: nn.Module, baseline: BaselineConfig | None = None) -> None:
        super().__init__(model)
        self.baseline = baseline or BaselineConfig.for_method("ft")
        base = _base(model)
        self.params = {
            f"{name}.{p_name}": p
            for name in self.modules.values()
            for p_name, p in base.get_submodule(name).named_parameters()
        }
        for p in base.parameters():
            p.requires_grad_(False)
        self._start: list[torch.Tensor] = []
        self._original = [p.detach().clone() for p in self.params.values()]  # for unedited()

    @contextlib.contextmanager
    def unedited(self) -> Iterator[nn.Module]:
        """The model with the FFN weights it had before the first edit, inside the block."""
        edited = [p.detach().clone() for p in self.params.values()]
        with torch.no_grad():
            for p, original in zip(self.params.values(), self._original):
                p.copy_(original)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for p, now in zip(self.params.values(), edited):
                    p.copy_(now)

    def begin(self, record_id: str, ffn_input: torch.Tensor, config: Any) -> list[nn.Parameter]:
        self._before = [p.detach().clone() for p in self.params.values()]  # for discard()
        for p in self.params.values():
            p.requires_grad_(True)
        if self.baseline.norm_constraint is not None:
            self._start = [p.detach().clone() for p in self.params.values()]
        return list(self.params.values())

    @torch.no_grad()
    def after_step(self) -> None:
        eps = self.baseline.norm_constraint
        if eps is None or not self._start:
            return
        for p, start in zip(self.params.values(), self._start):
            torch.clamp(p, min=start - eps, max=start + eps, out=p)

    def end(self) -> None:
        for p in self.params.values():
            p.requires_grad_(False)
        self._start = []

    abort = end

    def discard(self) -> None:
        with torch.no_grad():
            for p, before in zip(self.params.values(), getattr(self, "_before", [])):
                p.copy_(before)
        self.end()

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous() for k, v in self.params.items()}, str(Path(directory) / "ffn.safetensors")
        )

    def load(self, directory: str | os.PathLike) -> None:
        path = Path(directory) / "ffn.safetensors"
        try:
            saved = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types; name the file
            raise ValueError(f"{path} can't be read ({exc}); the checkpoint is damaged.") from exc
        missing, bad = sorted(set(self.params) - set(saved)), non_finite(saved.items())
        if missing or bad:
            raise ValueError(f"{path} lacks {missing} or holds non-finite values in {bad}; the checkpoint is damaged.")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(saved[name])


class LoRAStrategy(_BaselineStrategy):
    """LoRA: one peft LoRA adapter on the edited FFN's projections, trained further on every edit.

    The adapter is initialised from ``baseline.seed`` (the global RNG is left as it was), so two runs match.
    """

    name = "lora"

    def __init__(
        self, model: nn.Module, lora_config: LoraConfig | None = None, baseline: BaselineConfig | None = None
    ) -> None:
        self.baseline = baseline or BaselineConfig.for_method("lora")
        wrapped = isinstance(model, PeftModel) and not _is_mpn(model)
        block, modules = _locate_wrapped_ffn(model) if wrapped else locate_ffn(model)
        if not isinstance(model, PeftModel):
            rank = self.baseline.rank
            config = lora_config or LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0)
            config.target_modules = sorted(modules.values())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.baseline.seed)
                model = get_peft_model(model, config)
        self.model = model
        self.block, self.modules = block, modules

    @property
    def key_module(self) -> nn.Module:
        return self.model.get_base_model().get_submodule(self.modules["key"])

    def begin(self, record_id: str, ffn_input: torch.Tensor, config: Any) -> list[nn.Parameter]:
        params = [p for n, p in self.model.named_parameters() if "lora_" in n and p.requires_grad]
        self._before = [(p, p.detach().clone()) for p in params]  # for discard()
        return params

    def discard(self) -> None:
        with torch.no_grad():
            for p, before in getattr(self, "_before", []):
                p.copy_(before)

    def end(self) -> None:
        """Nothing to finish: the same LoRA adapter keeps training on the next edit."""

    def abort(self) -> None:
        """Nothing to undo: :meth:`begin` changes nothing."""

    def save(self, directory: str | os.PathLike) -> None:
        self.model.save_pretrained(str(directory))

    def load(self, directory: str | os.PathLike) -> None:
        self.model.load_adapter(str(directory), adapter_name="default", is_trainable=True)
        self.model.set_adapter("default")


class GraceStrategy(Strategy):
    """GRACE-style edits: a codebook on the edited FFN block (see `peft_mpn.editing.grace`).

    The base model's weights are never changed: two forward hooks (on the FFN input and output projections) read
    the [CLS] FFN input and replace the output projection's output there when it lies within a key's radius.
    """

    name = "grace"

    def __init__(self, model: nn.Module, grace: GraceConfig | None = None) -> None:
        if isinstance(model, PeftModel):
            raise TypeError("method='grace' hooks the base model: pass the plain transformers model, not a PeftModel.")
        super().__init__(model)
        self.grace = grace or GraceConfig()
        base = _base(model)
        for p in base.parameters():
            p.requires_grad_(False)
        key, value = base.get_submodule(self.modules["key"]), base.get_submodule(self.modules["value"])
        in_features = key.weight.shape[1] if isinstance(key, nn.Linear) else key.weight.shape[0]
        out_features = value.weight.shape[0] if isinstance(value, nn.Linear) else value.weight.shape[1]
        self.codebook = GraceCodebook(in_features, out_features).to(key.weight.device)
        self._hooks = [
            key.register_forward_pre_hook(self.codebook.stash_query),
            value.register_forward_hook(self.codebook.replace_output),
        ]

    @contextlib.contextmanager
    def unedited(self) -> Iterator[nn.Module]:
        """The model with the codebook switched off, inside the block."""
        enabled, self.codebook.enabled = self.codebook.enabled, False
        try:
            yield self.model
        finally:
            self.codebook.enabled = enabled

    def begin(self, record_id: str, ffn_input: torch.Tensor, config: Any) -> list[nn.Parameter]:
        if getattr(config, "position", "cls") != "cls":
            raise ValueError("method='grace' reads the [CLS] FFN input: use EditConfig(position='cls').")
        self.codebook.add(ffn_input.detach().float(), self.grace.radius, record_id)
        return [self.codebook.value]

    def optim_settings(self, config: Any) -> tuple[float, float, int]:
        return self.grace.lr, 0.0, self.grace.max_steps

    def end(self) -> None:
        self.codebook.freeze()

    def abort(self) -> None:
        self.codebook.pop()

    def remove_edit(self, edit_id: str) -> int:
        """Remove the codebook entries of ``edit_id``."""
        return self.codebook.remove(edit_id)

    def save(self, directory: str | os.PathLike) -> None:
        self.codebook.save(directory)

    def load(self, directory: str | os.PathLike) -> None:
        self.codebook.load(directory)


def make_strategy(
    method: str,
    model: nn.Module,
    *,
    adapter_name: str = "default",
    mpn_config: MPNConfig | None = None,
    lora_config: LoraConfig | None = None,
    baseline: BaselineConfig | None = None,
    grace: GraceConfig | None = None,
) -> Strategy:
    """The strategy of ``method``, wrapping a plain transformers model where the method needs a PEFT model.

    ``baseline`` sets how FT-L and LoRA edit (`BaselineConfig`), ``grace`` the GRACE codebook (`GraceConfig`);
    the other methods ignore them.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}.")
    if method in ("mpn", "tpatcher"):
        if not _is_mpn(model):
            if isinstance(model, PeftModel):
                raise TypeError(f"method={method!r} needs an MPN adapter, but the PeftModel holds another type.")
            model = get_peft_model(model, mpn_config or MPNConfig())
        return PatchStrategy(model, adapter_name)
    if method == "grace":
        return GraceStrategy(model, grace)
    if isinstance(model, PeftModel) and method == "ft":
        raise TypeError("method='ft' fine-tunes the base model: pass the plain transformers model, not a PeftModel.")
    if method == "ft":
        return FTLStrategy(model, baseline)
    return LoRAStrategy(model, lora_config, baseline)
