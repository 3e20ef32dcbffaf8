"""`MPNModel`: the PEFT tuner that injects growable patch neurons into FFN blocks."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, _ExcludedModule
from torch import nn

from ..utils.checks import is_int, non_finite
from .config import FFN_PRESETS, PREFIX, MPNConfig
from .layer import (
    ROLES,
    MPNLayer,
    PatchBank,
    append_input_units,
    append_output_units,
    is_supported_layer,
    layer_features,
)


Block = dict[str, MPNLayer]


def layer_index(key: str, layers_pattern: list[str] | None = None) -> int | None:
    """Return the index of the transformer layer a module name lies in, e.g. 11 for ``encoder.layer.11.x``."""
    names = "|".join(re.escape(p) for p in layers_pattern) if layers_pattern else r"[^.]+"
    match = re.search(rf"(?:^|\.)(?:{names})\.(\d+)\.", key)
    return int(match.group(1)) if match else None


def _suffix_match(key: str, names: list[str] | None) -> bool:
    return any(key == name or key.endswith("." + name) for name in names or [])


def _candidate_modules(config: MPNConfig, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose names match an FFN role and are not excluded, with no layer filter."""
    found = []
    for key, module in model.named_modules():
        if not key or _suffix_match(key, config.exclude_modules) or config.role_of(key) is None:
            continue
        if ".mpn_patches." in key or key.endswith(".base_layer"):
            continue
        found.append((key, module))
    return found


def _linear_names(model: nn.Module, limit: int = 12) -> list[str]:
    """Distinct names of the linear layers of a model, with layer indices shown as ``N``."""
    names = dict.fromkeys(re.sub(r"\.\d+\.", ".N.", k) for k, m in model.named_modules() if is_supported_layer(m))
    return list(names)[:limit]


def _features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, MPNLayer):
        return module.in_features, module.out_features
    return layer_features(module)


def plan_blocks(config: MPNConfig, model: nn.Module) -> dict[str, dict[str, tuple[str, nn.Module]]]:
    """Resolve and validate which FFN blocks an MPN config patches on ``model``.

    Fills in ``config.layers_to_transform`` (the last layer when ``None``, every layer for ``"all"``) and
    ``config.block_dims``.

    Returns:
        ``{block: {role: (module name, module)}}`` for every patched block.

    Raises:
        ValueError: A configured module matches nothing, a block lacks its key or value module, the widths of a
            block don't fit together, or a saved adapter was made for other FFN sizes.
    """
    _check_preset_order(config, model)
    candidates = _candidate_modules(config, model)
    for role, names in (("key", config.key_modules), ("up", config.up_modules), ("value", config.value_modules)):
        for name in names or []:
            if not any(_suffix_match(key, [name]) for key, _ in candidates):
                raise ValueError(
                    f"MPNConfig {role}_modules entry {name!r} matches no module of this {type(model).__name__}. "
                    f"Linear layers it has include: {_linear_names(model)}. Name the FFN input projection in "
                    "key_modules and the FFN output projection in value_modules (and, for a gated MLP, the up "
                    "projection in up_modules)."
                )

    indices = {layer_index(key, config.layers_pattern) for key, _ in candidates} - {None}
    if config.layers_to_transform is None and indices:
        config.layers_to_transform = [max(indices)]
    elif config.layers_to_transform == "all":
        config.layers_to_transform = sorted(indices) if indices else None
    if config.layers_to_transform is not None:
        missing = sorted(set(config.layers_to_transform) - indices)
        if missing:
            raise ValueError(
                f"MPNConfig.layers_to_transform={config.layers_to_transform} names layers {missing} that this model "
                f"does not have; it has FFN blocks in layers {sorted(indices)}."
            )

    blocks: dict[str, dict[str, tuple[str, nn.Module]]] = {}
    for key, module in candidates:
        if not MPNModel._check_target_module_exists(config, key):
            continue  # another layer (excluded modules never reach here)
        role, block = config.role_of(key), config.block_of(key)
        if not (is_supported_layer(module) or isinstance(module, MPNLayer)):
            raise ValueError(
                f"MPN can only patch nn.Linear or Conv1D projections, but {key!r} is a {type(module).__name__}. "
                "Point key_modules/value_modules at the FFN's linear layers."
            )
        if role in blocks.setdefault(block, {}):
            raise ValueError(
                f"FFN block {block!r} has two {role} modules: {blocks[block][role][0]!r} and {key!r}. Make "
                f"{role}_modules more specific, e.g. with the parent module name."
            )
        blocks[block][role] = (key, module)

    order = {key: i for i, (key, _) in enumerate(candidates)}
    for block, parts in blocks.items():
        _check_block(config, block, parts, _order_hint(config, model))
        _check_direction(config, block, parts, order)
    _check_saved_shapes(config, blocks)
    return blocks


def _order_hint(config: MPNConfig, model: nn.Module) -> str:
    """Advice that names the right roles: this architecture's preset, or the general rule."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    preset = FFN_PRESETS.get(model_type or "")
    rule = (
        " key_modules names the FFN input projection (the gate of a gated MLP) and value_modules its output projection"
    )
    if preset is None:
        return rule + "."
    named = f"key_modules={list(preset.key_modules)}, value_modules={list(preset.value_modules)}"
    if preset.up_modules:
        named += f", up_modules={list(preset.up_modules)}"
    return f"{rule}; for {model_type} that is {named} (what MPNConfig() picks when no module is named)."


def _check_preset_order(config: MPNConfig, model: nn.Module) -> None:
    """``ValueError`` if the roles given are a known architecture's FFN modules in the wrong roles."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    preset = FFN_PRESETS.get(model_type or "")
    if preset is None or not config.has_roles:
        return
    given = {"key": config.key_modules or [], "up": config.up_modules or [], "value": config.value_modules or []}
    right = {"key": list(preset.key_modules), "up": list(preset.up_modules), "value": list(preset.value_modules)}
    if given != right and sorted(sum(given.values(), [])) == sorted(sum(right.values(), [])):
        raise ValueError(
            f"MPNConfig has the FFN modules of this {model_type} model in the wrong roles (key_modules="
            f"{given['key']}, value_modules={given['value']}, up_modules={given['up'] or None}):"
            f"{_order_hint(config, model)}"
        )


def _check_direction(config: MPNConfig, block: str, parts: dict[str, tuple[str, nn.Module]], order: dict) -> None:
    """``ValueError`` if the key and value modules look swapped: the value module comes first in the model and the
    key module narrows the FFN (a transformer FFN widens, then projects back)."""
    (key_name, key), (value_name, _) = parts["key"], parts["value"]
    d_in, width = _features(key)
    if order[value_name] < order[key_name] and width < d_in:
        raise ValueError(
            f"FFN block {block!r}: key_modules and value_modules look swapped. The key module {key_name!r} maps "
            f"{d_in} -> {width} units and comes after the value module {value_name!r}, as an FFN's output "
            f"projection does. Pass key_modules={config.value_modules}, value_modules={config.key_modules}: "
            "key_modules names the FFN input projection, value_modules its output projection."
        )


def _check_block(config: MPNConfig, block: str, parts: dict[str, tuple[str, nn.Module]], hint: str = "") -> None:
    names = {role: name for role, (name, _) in parts.items()}
    if "key" not in parts or "value" not in parts:
        have, lack = ("key", "value") if "key" in parts else ("value", "key")
        raise ValueError(
            f"FFN block {block!r} has the {have} module {names.get(have, names)!r} but no {lack} module, so it is "
            f"not an FFN block: check that the module names are in the right roles (target_modules is [key, value] "
            f"or [gate, up, down]), and exclude modules that only share a suffix (exclude_modules).{hint}"
        )
    if bool(config.up_modules) != ("up" in parts):
        raise ValueError(
            f"FFN block {block!r}: up_modules={config.up_modules} but the block's up module is "
            f"{names.get('up', 'missing')!r}. Gated MLPs need key (gate), up and value (down) modules."
        )
    d_in, width = _features(parts["key"][1])
    v_in, d_out = _features(parts["value"][1])
    if v_in != width:
        raise ValueError(
            f"FFN block {block!r}: the key module {names['key']!r} outputs {width} units but the value module "
            f"{names['value']!r} takes {v_in} inputs, so they are not one FFN's two projections.{hint}"
        )
    if "up" in parts and _features(parts["up"][1]) != (d_in, width):
        raise ValueError(
            f"FFN block {block!r}: the up module {names['up']!r} must have the shape of the gate "
            f"{names['key']!r}.{hint}"
        )
    dims = [d_in, width, d_out]
    saved = config.block_dims.get(block)
    if saved is not None and list(saved) != dims:
        raise ValueError(
            f"This MPN adapter was made for an FFN of dims {list(saved)} ([in, width, out]) at {block!r}, but this "
            f"base model has {dims} there. Load it onto the base model it was trained on "
            f"({config.base_model_name_or_path or 'see base_model_name_or_path in adapter_config.json'})."
        )
    config.block_dims[block] = dims


def _check_saved_shapes(config: MPNConfig, blocks: dict[str, Any]) -> None:
    missing = sorted(set(config.patch_sizes) - set(blocks))
    if missing:
        raise ValueError(
            f"This MPN adapter has patches for FFN blocks {missing}, which this base model does not have (it has "
            f"{sorted(blocks)}). Load it onto the base model it was trained on "
            f"({config.base_model_name_or_path or 'see base_model_name_or_path in adapter_config.json'})."
        )


def _aligned_ids(ids: list[str | None] | None, n: int) -> list[str | None]:
    """The edit ids of a block's ``n`` patches: ``ids`` cut or padded with ``None`` (patches of unknown edits)."""
    ids = list(ids or [])[:n]
    return ids + [None] * (n - len(ids))


def _as_rows(value: Any, block: str, n: int, dim: int, name: str) -> torch.Tensor | None:
    """Validate a user-given patch tensor and return it as ``(n, dim)`` (or ``(n,)`` when ``dim`` is 0)."""
    if isinstance(value, dict):
        if block not in value:
            raise ValueError(f"add_patch: {name} is a dict but has no entry for FFN block {block!r}.")
        value = value[block]
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        if isinstance(value, (int, float)) and dim == 0:
            return torch.full((n,), float(value))
        try:
            value = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"add_patch: {name} must be a tensor, got {type(value).__name__}.") from exc
    want, given = ((n, dim) if dim else (n,)), tuple(value.shape)
    if dim and value.dim() == 1 and n == 1:
        value = value.unsqueeze(0)
    if dim == 0 and value.dim() == 0:
        value = value.expand(n)
    if tuple(value.shape) != want:
        single = f" or ({dim},)" if dim and n == 1 else ""
        raise ValueError(
            f"add_patch: {name} for FFN block {block!r} must have shape {want}{single} (num_neurons={n}), got {given}."
        )
    if not torch.is_floating_point(value):
        value = value.float()
    return value


class MPNModel(BaseTuner):
    """Patch neurons in the FFN blocks of a transformer, as a PEFT tuner.

    Created by ``get_peft_model(model, MPNConfig(...))``; its methods are reachable from the ``PeftModel`` too.
    Each call to :meth:`add_patch` grows every patched FFN block by one patch (one or more neurons); patches are
    trained, then frozen with :meth:`freeze_patches`, which consolidates them so the forward pass stays fast.

    Args:
        model: The transformers model to patch.
        config: The MPN configuration, or a dict of them by adapter name.
        adapter_name: Name of the first adapter.
        low_cpu_mem_usage: Create empty adapter weights on the meta device.

    Example:
        >>> import torch
        >>> import peft_mpn  # registers the MPN PEFT type
        >>> from transformers import BertConfig, BertModel
        >>> from peft import get_peft_model
        >>> base = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                             intermediate_size=64, vocab_size=100))
        >>> model = get_peft_model(base, peft_mpn.MPNConfig(init_value_std=0.1))
        >>> model.add_patch()
        ['encoder.layer.1']
        >>> model.num_patches()
        1
        >>> model.freeze_patches()
        >>> [n for n, p in model.named_parameters() if p.requires_grad]
        []
    """

    prefix: str = PREFIX
    tuner_layer_cls = MPNLayer
    target_module_mapping = {
        model_type: [*p.key_modules, *p.up_modules, *p.value_modules] for model_type, p in FFN_PRESETS.items()
    }

    # ------------------------------------------------------------------ injection (BaseTuner hooks)
    def _prepare_adapter_config(self, peft_config: MPNConfig, model_config: dict) -> MPNConfig:
        if not isinstance(peft_config, MPNConfig):
            raise TypeError(f"MPNModel needs an MPNConfig, got {type(peft_config).__name__}.")
        if not peft_config.has_roles:
            peft_config.apply_preset(model_config.get("model_type"))
        return peft_config

    def _prepare_model(self, peft_config: MPNConfig, model: nn.Module) -> None:
        plan_blocks(peft_config, model)

    @staticmethod
    def _check_target_module_exists(config: MPNConfig, key: str) -> bool | _ExcludedModule:
        if _suffix_match(key, config.exclude_modules):
            return _ExcludedModule()  # peft counts these, to warn about an exclude_modules that excludes nothing
        if config.role_of(key) is None:
            return False
        layers = config.layers_to_transform
        if layers is None or layers == "all":
            return True
        return layer_index(key, config.layers_pattern) in layers

    def _create_and_replace(
        self,
        peft_config: MPNConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        role, block = peft_config.role_of(current_key), peft_config.block_of(current_key)
        sizes = peft_config.patch_sizes.get(block, [])
        num_frozen = peft_config.num_frozen.get(block, 0)
        if isinstance(target, MPNLayer):
            target.update_layer(adapter_name, sizes=sizes, num_frozen=num_frozen, sharpness=peft_config.sharpness)
            return
        new_module = MPNLayer(
            target,
            role,
            block,
            adapter_name,
            sizes=sizes,
            num_frozen=num_frozen,
            sharpness=peft_config.sharpness,
            gated=bool(peft_config.up_modules),
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        marker = f".mpn_patches.{adapter_name}."
        if marker in key:
            return key.replace(marker, ".mpn_patches.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: MPNConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Map checkpoint keys to the model, growing patch banks to the checkpoint's shapes first.

        This is what lets ``load_adapter`` and a ``Trainer`` resume load a checkpoint with more (or frozen)
        patches than the model in memory has.
        """
        for name, module in model.named_modules():
            if not isinstance(module, MPNLayer) or adapter_name not in module.mpn_patches:
                continue
            bank = module.mpn_patches[adapter_name]
            found = {}
            for field in ("sizes", "num_frozen"):
                key = cls._remove_adapter_name_from_key(f"{name}.mpn_patches.{adapter_name}.{field}", adapter_name)
                found[field] = state_dict.get(key, state_dict.get("base_model.model." + key))
            if found["sizes"] is None or found["num_frozen"] is None:
                continue
            sizes, num_frozen = found["sizes"].tolist(), int(found["num_frozen"])
            if sizes != bank.sizes.tolist() or num_frozen != int(bank.num_frozen):
                trainable = adapter_name in module.active_adapters and not config.inference_mode
                bank.resize(sizes, num_frozen, requires_grad=trainable)
            config.patch_sizes[module.block] = sizes
            config.num_frozen[module.block] = num_frozen
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)

    # ------------------------------------------------------------------ patches
    def _adapter(self, adapter_name: str | None) -> str:
        if adapter_name is not None:
            if adapter_name not in self.peft_config:
                raise ValueError(f"No adapter named {adapter_name!r}; have {sorted(self.peft_config)}.")
            return adapter_name
        active = self.active_adapters
        if len(active) != 1:
            raise ValueError(f"{len(active)} adapters are active ({active}); pass adapter_name= to choose one.")
        return active[0]

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        self._mpn_layers = None  # the module tree changes: look for the MPN layers again
        super()._replace_module(parent, child_name, new_module, child)

    def _layers(self) -> list[MPNLayer]:
        """The model's MPN layers, found once per change of the module tree (a walk over it costs ~0.5 ms)."""
        layers = getattr(self, "_mpn_layers", None)
        if layers is None:
            layers = self._mpn_layers = [m for m in self.model.modules() if isinstance(m, MPNLayer)]
        return layers

    def patch_blocks(self, adapter_name: str | None = None) -> dict[str, Block]:
        """The patched FFN blocks of an adapter: ``{block name: {"key": layer, "value": layer, ("up": layer)}}``."""
        adapter = self._adapter(adapter_name)
        blocks: dict[str, Block] = {}
        for module in self._layers():
            if adapter in module.mpn_patches:
                blocks.setdefault(module.block, {})[module.role] = module
        return blocks

    def _sync_config(self, adapter: str) -> None:
        config = self.peft_config[adapter]
        for block, parts in self.patch_blocks(adapter).items():
            bank = parts["key"].bank(adapter)
            config.patch_sizes[block] = bank.sizes.tolist()
            config.num_frozen[block] = int(bank.num_frozen)
            config.patch_ids[block] = _aligned_ids(config.patch_ids.get(block), bank.num_patches)
        live = {i for ids in config.patch_ids.values() for i in ids if i is not None}
        for edit_id in [i for i in config.edit_log if i not in live]:
            del config.edit_log[edit_id]  # no patch of it is left

    def add_patch(
        self,
        num_neurons: int = 1,
        key: torch.Tensor | dict[str, torch.Tensor] | None = None,
        bias: torch.Tensor | float | dict[str, Any] | None = None,
        value: torch.Tensor | dict[str, torch.Tensor] | None = None,
        *,
        adapter_name: str | None = None,
        blocks: list[str] | None = None,
        edit_id: str | None = None,
    ) -> list[str]:
        """Grow each patched FFN block by one patch of ``num_neurons`` neurons.

        Old patches are never replaced, so an optimizer built over earlier patches stays valid.

        Args:
            num_neurons: Neurons in the new patch.
            key: ``(num_neurons, in_features)`` (or ``(in_features,)`` for one neuron), or a dict by block name.
                Default: normal with std ``init_key_std``.
            bias: ``(num_neurons,)``, a float, or a dict by block name. Default 0.
            value: ``(num_neurons, out_features)`` (or ``(out_features,)``), or a dict by block. Default: normal
                with std ``init_value_std`` (zeros by default, so the new patch changes nothing until trained).
            adapter_name: The adapter to grow; defaults to the active one.
            blocks: Only grow these FFN blocks (default: every patched block).
            edit_id: The id of the edit (record) this patch fixes, kept in ``MPNConfig.patch_ids`` so that
                :meth:`remove_edit` can undo it later; the editors pass the record id.

        Returns:
            The names of the FFN blocks that got the patch.

        Raises:
            ValueError: If a given tensor has the wrong shape or holds NaN or infinite values, or ``num_neurons`` < 1.
        """
        if not is_int(num_neurons, least=1):
            raise ValueError(f"add_patch: num_neurons must be a positive int, got {num_neurons!r}.")
        if edit_id is not None and (not isinstance(edit_id, str) or not edit_id.strip()):
            raise ValueError(f"add_patch: edit_id must be a non-blank string (a record id) or None, got {edit_id!r}.")
        adapter = self._adapter(adapter_name)
        config = self.peft_config[adapter]
        all_blocks = self.patch_blocks(adapter)
        chosen = list(all_blocks) if blocks is None else list(blocks)
        unknown = sorted(set(chosen) - set(all_blocks))
        if unknown:
            raise ValueError(f"add_patch: unknown FFN blocks {unknown}; the adapter patches {sorted(all_blocks)}.")

        tensors = {}
        for block in chosen:  # validate everything before growing anything
            parts = all_blocks[block]
            d_in, d_out = parts["key"].in_features, parts["value"].out_features
            k = _as_rows(key, block, num_neurons, d_in, "key")
            if k is None:
                std = config.init_key_std or d_in**-0.5
                k = torch.randn(num_neurons, d_in) * std
            b = _as_rows(bias, block, num_neurons, 0, "bias")
            v = _as_rows(value, block, num_neurons, d_out, "value")
            if v is None:
                v = torch.randn(num_neurons, d_out) * config.init_value_std
            tensors[block] = (k, torch.zeros(num_neurons) if b is None else b, v)
            bad = non_finite(zip(("key", "bias", "value"), tensors[block]))
            if bad:
                raise ValueError(
                    f"add_patch: {' and '.join(bad)} for FFN block {block!r} holds NaN or infinite values; a patch "
                    "must start finite (pass finite tensors, or None for the default initialisation)."
                )

        for block in chosen:
            parts = all_blocks[block]
            k, b, v = tensors[block]
            trainable = adapter in parts["key"].active_adapters and not config.inference_mode
            parts["key"].bank(adapter).add(k, b, requires_grad=trainable)
            if "up" in parts:
                up = parts["up"].bank(adapter)
                up.add(torch.zeros_like(k), torch.ones(num_neurons), requires_grad=trainable)
            parts["value"].bank(adapter).add(v, None, requires_grad=trainable)
            ids = _aligned_ids(config.patch_ids.get(block), parts["key"].bank(adapter).num_patches - 1)
            config.patch_ids[block] = [*ids, edit_id]
        self._sync_config(adapter)
        return chosen

    def pop_patch(self, adapter_name: str | None = None) -> None:
        """Remove the newest patch of every patched FFN block (e.g. to roll back a failed edit).

        Raises:
            ValueError: If the newest patch is frozen; call :meth:`unfreeze_patches` first.
        """
        adapter = self._adapter(adapter_name)
        banks = list(self._banks(adapter))
        if any(len(bank.weights) == 0 for bank in banks):
            raise ValueError("pop_patch: the newest patch is frozen (or there is none); unfreeze_patches() first.")
        for bank in banks:
            bank.pop()
        self._sync_config(adapter)  # drops the newest ids (aligned to the banks) and edits left without a patch

    # ------------------------------------------------------------------ the edits behind the patches
    def record_edit(self, edit_id: str, adapter_name: str | None = None, **info: Any) -> None:
        """Note what is known of edit ``edit_id`` (languages, steps, seconds, ...) in ``MPNConfig.edit_log``.

        The values must be JSON-ready: they are saved in ``adapter_config.json``.

        Raises:
            ValueError: If no patch of the adapter carries ``edit_id``.
        """
        adapter = self._adapter(adapter_name)
        config = self.peft_config[adapter]
        if not any(edit_id in ids for ids in config.patch_ids.values()):
            raise ValueError(f"record_edit: no patch of adapter {adapter!r} fixes edit {edit_id!r}.")
        config.edit_log[edit_id] = {**config.edit_log.get(edit_id, {}), **info}

    def edits(self, adapter_name: str | None = None) -> list[dict[str, Any]]:
        """The edits of the adapter, oldest first: one dict per edit id.

        Each dict has ``id``, ``patches`` (over all blocks), ``neurons``, ``frozen`` (all its patches are frozen),
        and what the editor recorded: ``languages``, ``steps``, ``seconds`` (wall time of the edit), ``time`` (UTC,
        ISO 8601), ``success`` and ``method``. Patches added without an edit id are not listed.
        """
        adapter = self._adapter(adapter_name)
        config = self.peft_config[adapter]
        found: dict[str, dict[str, Any]] = {}
        for block, parts in self.patch_blocks(adapter).items():
            bank = parts["key"].bank(adapter)
            ids = _aligned_ids(config.patch_ids.get(block), bank.num_patches)
            n_frozen = int(bank.num_frozen)
            for index, (edit_id, size) in enumerate(zip(ids, bank.sizes.tolist())):
                if edit_id is None:
                    continue
                entry = found.setdefault(edit_id, {"id": edit_id, "patches": 0, "neurons": 0, "frozen": True})
                entry["patches"] += 1
                entry["neurons"] += size
                entry["frozen"] = entry["frozen"] and index < n_frozen
        return [{**entry, **config.edit_log.get(edit_id, {})} for edit_id, entry in found.items()]

    def remove_edit(self, edit_id: str, adapter_name: str | None = None) -> int:
        """Remove every patch that fixes edit ``edit_id``, frozen or trainable. Exact.

        The model then computes exactly what the adapter computes with those units deleted: the other patches keep
        their rows, order and values. Works after save/load (the ids are in ``MPNConfig.patch_ids``).

        Returns:
            The number of patches removed (over all FFN blocks).

        Raises:
            ValueError: If no patch carries ``edit_id`` (the message lists some that do), or the adapter is merged
                (call ``unmerge_adapter()`` first).
        """
        adapter = self._adapter(adapter_name)
        config = self.peft_config[adapter]
        blocks = self.patch_blocks(adapter)
        if any(layer.merged for parts in blocks.values() for layer in parts.values()):
            raise ValueError("remove_edit: the adapter is merged into the base weights; call unmerge_adapter() first.")
        plan = {}
        for block, parts in blocks.items():
            ids = _aligned_ids(config.patch_ids.get(block), parts["key"].bank(adapter).num_patches)
            plan[block] = (ids, [i for i, known in enumerate(ids) if known == edit_id])
        if not any(indices for _, indices in plan.values()):
            known = list(dict.fromkeys(i for ids in config.patch_ids.values() for i in ids if i is not None))
            shown = ", ".join(repr(i) for i in known[:10]) + (", ..." if len(known) > 10 else "")
            raise ValueError(
                f"remove_edit: no patch of adapter {adapter!r} fixes edit {edit_id!r}; its edits are: "
                f"{shown or 'none (patches added without an edit id cannot be removed by id)'}. See model.edits()."
            )
        removed = 0
        for block, (ids, indices) in plan.items():
            if not indices:
                continue
            for role in ROLES:
                if role in blocks[block]:
                    blocks[block][role].bank(adapter).remove(indices)
            config.patch_ids[block] = [known for i, known in enumerate(ids) if i not in set(indices)]
            removed += len(indices)
        if isinstance(getattr(config, "edits", None), int):  # the model card's count of edits
            config.edits = max(0, config.edits - 1)
        self._sync_config(adapter)
        return removed

    def freeze_patches(self, adapter_name: str | None = None) -> None:
        """Freeze every patch of the adapter and consolidate them into one tensor per projection.

        Frozen patches stay frozen through ``set_adapter``, ``enable_adapter_layers``, ``disable_adapter()`` and
        save/load; only :meth:`unfreeze_patches` makes them trainable again.
        """
        adapter = self._adapter(adapter_name)
        for bank in self._banks(adapter):
            bank.freeze()
        self._sync_config(adapter)

    def unfreeze_patches(self, adapter_name: str | None = None) -> None:
        """Make every frozen patch of the adapter trainable again, one Parameter per patch."""
        adapter = self._adapter(adapter_name)
        trainable = adapter in self.active_adapters and not self.peft_config[adapter].inference_mode
        for bank in self._banks(adapter):
            bank.unfreeze(requires_grad=trainable)
        self._sync_config(adapter)

    def num_patches(self, adapter_name: str | None = None) -> int:
        """Number of patches of the adapter, summed over its FFN blocks (one per block per :meth:`add_patch`)."""
        adapter = self._adapter(adapter_name)
        return sum(parts["key"].bank(adapter).num_patches for parts in self.patch_blocks(adapter).values())

    def num_frozen_patches(self, adapter_name: str | None = None) -> int:
        """Number of frozen patches of the adapter, summed over its FFN blocks."""
        adapter = self._adapter(adapter_name)
        return sum(int(parts["key"].bank(adapter).num_frozen) for parts in self.patch_blocks(adapter).values())

    def patch_parameters(
        self, adapter_name: str | None = None, newest_only: bool = False, roles: Sequence[str] = ROLES
    ) -> list[nn.Parameter]:
        """The trainable patch Parameters of the adapter (only the newest patch's when ``newest_only``; only the
        banks of ``roles``, of ``"key"``, ``"up"`` and ``"value"``, when given)."""
        adapter = self._adapter(adapter_name)
        params = []
        for bank in self._banks(adapter, roles):
            weights, biases = list(bank.weights), list(bank.biases)
            if newest_only:
                weights, biases = weights[-1:], biases[-1:]
            params.extend(weights + biases)
        return params

    def _banks(self, adapter: str, roles: Sequence[str] = ROLES) -> Iterator[PatchBank]:
        for parts in self.patch_blocks(adapter).values():
            for role in roles:
                if role in parts:
                    yield parts[role].bank(adapter)

    @contextlib.contextmanager
    def capture_activations(self, adapter_name: str | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Record the pre-activations ``k . x + b`` of the adapter's patch units during forward passes.

        Yields:
            A dict that fills with ``{block name: tensor (..., num_neurons)}`` on each forward pass inside the block;
            the tensors keep their autograd graph, so losses on them train the keys.
        """
        adapter = self._adapter(adapter_name)
        captured: dict[str, torch.Tensor] = {}
        layers = [parts["key"] for parts in self.patch_blocks(adapter).values()]
        for layer in layers:
            layer.capture_to = (adapter, captured)
        try:
            yield captured
        finally:
            for layer in layers:
                layer.capture_to = None

    # ------------------------------------------------------------------ merge
    def merge_and_unload(
        self,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
        *,
        uniform_width: bool = True,
    ) -> nn.Module:
        """Merge the patches into the base model and return it, without PEFT wrappers. Exact.

        A patched layer's FFN is wider than the others, which a standard checkpoint can't express. With
        ``uniform_width=True`` (the default) every FFN block is padded with zero units to the widest one and the
        width in ``model.config`` (e.g. ``intermediate_size``) is rewritten, so ``merged.save_pretrained(d)`` reloads
        with plain ``AutoModel...from_pretrained(d)``. The zero units cost compute on every layer: for serving, the
        adapter itself (or :meth:`merge_adapter` in memory) is cheaper. ``uniform_width=False`` merges in memory only.

        Raises:
            ValueError: If ``uniform_width`` is asked for an architecture whose FFN width can't be rewritten (unknown
                ``model_type``, or a gated MLP without a bias option, such as Qwen2 and Mistral).
        """
        plan = self._uniform_width_plan() if uniform_width else None
        model = super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)
        if plan is not None:
            _pad_ffn_to_uniform_width(model, *plan)
        return model

    def _uniform_width_plan(self) -> tuple[MPNConfig, str, str | None]:
        model_type = getattr(getattr(self.model, "config", None), "model_type", None)
        preset = FFN_PRESETS.get(model_type or "")
        why = "pass uniform_width=False to merge in memory only, or keep the adapter and load it with PeftModel"
        if preset is None or preset.width_attr is None:
            raise ValueError(
                f"merge_and_unload can't rewrite the FFN width of model_type={model_type!r} to make a standard "
                f"checkpoint; {why}."
            )
        config = next(iter(self.peft_config.values()))
        if config.up_modules and preset.bias_attr is None:
            raise ValueError(
                f"{model_type} MLPs have no bias, and a merged patch neuron needs one on its gate and up units, so "
                f"the merged model can't be saved as a standard {model_type} checkpoint; {why}."
            )
        return config, preset.width_attr, preset.bias_attr


def _pad_ffn_to_uniform_width(model: nn.Module, config: MPNConfig, width_attr: str, bias_attr: str | None) -> None:
    """Pad every FFN block with zero units to the widest block, and rewrite the width in ``model.config``."""
    blocks: dict[str, dict[str, nn.Module]] = {}
    for key, module in _candidate_modules(config, model):
        blocks.setdefault(config.block_of(key), {})[config.role_of(key)] = module
    widths = {block: _features(parts["key"])[1] for block, parts in blocks.items()}
    target = max(widths.values())
    needs_bias = bias_attr is not None and any(p["key"].bias is not None for p in blocks.values())
    for block, parts in blocks.items():
        pad = target - widths[block]
        d_in, d_out = _features(parts["key"])[0], _features(parts["value"])[1]
        ref = parts["key"].weight
        if needs_bias:
            for module in parts.values():
                if module.bias is None:
                    out = _features(module)[1]
                    module.bias = nn.Parameter(ref.new_zeros(out), requires_grad=False)
        if pad:
            for role in ("key", "up"):
                if role in parts:
                    append_output_units(parts[role], ref.new_zeros(pad, d_in), ref.new_zeros(pad))
            append_input_units(parts["value"], ref.new_zeros(pad, d_out))
    setattr(model.config, width_attr, target)
    if needs_bias:
        setattr(model.config, bias_attr, True)
