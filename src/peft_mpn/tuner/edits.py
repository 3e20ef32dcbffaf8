"""The edits of a saved MPN adapter directory: list them, or remove one, without loading the base model.

``MPNModel.edits()`` and ``MPNModel.remove_edit(id)`` do the same on a model in memory; these work on the files
(``adapter_config.json`` and ``adapter_model.safetensors``), so ``peft-mpn edits list|remove`` needs no base model.
The removal reuses `PatchBank.remove` on banks rebuilt from the saved tensors, so it is the same exact operation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from ..utils.io import atomic_write
from .layer import PatchBank


CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_MARK = ".mpn_patches."


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {os.fspath(directory)!r}; pass an MPN adapter directory.")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "MPN":
        raise ValueError(f"{path} is a {config.get('peft_type')} adapter, not MPN: it has no edits to list.")
    return config


def _aligned(ids: list[Any] | None, n: int) -> list[Any]:
    ids = list(ids or [])[:n]
    return ids + [None] * (n - len(ids))


def saved_edits(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """The edits of a saved adapter, oldest first, as ``MPNModel.edits()`` lists them.

    Raises:
        FileNotFoundError: If the directory has no ``adapter_config.json``.
        ValueError: If it is not an MPN adapter.
    """
    config = _read_config(Path(directory))
    found: dict[str, dict[str, Any]] = {}
    for block, sizes in config.get("patch_sizes", {}).items():
        ids = _aligned(config.get("patch_ids", {}).get(block), len(sizes))
        n_frozen = int(config.get("num_frozen", {}).get(block, 0))
        for index, (edit_id, size) in enumerate(zip(ids, sizes)):
            if edit_id is None:
                continue
            entry = found.setdefault(edit_id, {"id": edit_id, "patches": 0, "neurons": 0, "frozen": True})
            entry["patches"] += 1
            entry["neurons"] += int(size)
            entry["frozen"] = entry["frozen"] and index < n_frozen
    info = config.get("edit_log") or {}
    return [{**entry, **info.get(edit_id, {})} for edit_id, entry in found.items()]


def remove_saved_edit(directory: str | os.PathLike, edit_id: str, output: str | os.PathLike | None = None) -> int:
    """Remove every patch of edit ``edit_id`` from a saved adapter; write the result to ``output`` (default: in
    place). Exact: the remaining patch rows keep their values and order.

    Returns:
        The number of patches removed (over all FFN blocks).

    Raises:
        FileNotFoundError: If the directory has no adapter files.
        ValueError: If no patch carries ``edit_id`` (the message lists the ids there are).
    """
    from .config import MPNConfig

    source = Path(directory)
    config = _read_config(source)
    ids_by_block = {
        block: _aligned(config.get("patch_ids", {}).get(block), len(sizes))
        for block, sizes in config.get("patch_sizes", {}).items()
    }
    plan = {block: [i for i, known in enumerate(ids) if known == edit_id] for block, ids in ids_by_block.items()}
    if not any(plan.values()):
        known = [e["id"] for e in saved_edits(source)]
        shown = ", ".join(repr(i) for i in known[:10]) + (", ..." if len(known) > 10 else "")
        raise ValueError(
            f"no patch of the adapter in {os.fspath(source)!r} fixes edit {edit_id!r}; its edits are: "
            f"{shown or 'none'}. List them with `peft-mpn edits list`."
        )
    weights_path = source / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {os.fspath(source)!r}.")
    state = load_file(str(weights_path))
    peft_config = MPNConfig.from_pretrained(str(source))
    new_state: dict[str, torch.Tensor] = {k: v for k, v in state.items() if _MARK not in k}
    for prefix in sorted({k.split(_MARK)[0] for k in state if _MARK in k}):
        module = prefix.removeprefix("base_model.model.")
        block = peft_config.block_of(module)
        role = peft_config.role_of(module) or "key"
        bank = _bank_from_state(state, prefix, role)
        bank.remove(plan.get(block, []))
        for name, tensor in bank.state_dict().items():
            new_state[f"{prefix}{_MARK}{name}"] = tensor.contiguous()
    removed = sum(len(v) for v in plan.values())
    for block, indices in plan.items():
        peft_config.patch_ids[block] = [known for i, known in enumerate(ids_by_block[block]) if i not in set(indices)]
        keep = [s for i, s in enumerate(peft_config.patch_sizes[block]) if i not in set(indices)]
        n_frozen = int(peft_config.num_frozen.get(block, 0))
        peft_config.num_frozen[block] = n_frozen - sum(1 for i in indices if i < n_frozen)
        peft_config.patch_sizes[block] = keep
    live = {i for ids in peft_config.patch_ids.values() for i in ids if i is not None}
    peft_config.edit_log = {k: v for k, v in peft_config.edit_log.items() if k in live}
    if isinstance(getattr(peft_config, "edits", None), int):  # the model card's count of edits
        peft_config.edits = max(0, peft_config.edits - 1)
    target = Path(output) if output is not None else source
    target.mkdir(parents=True, exist_ok=True)
    atomic_write(target / WEIGHTS_FILE, lambda handle: handle.write(_serialise(new_state)))
    peft_config.save_pretrained(str(target))
    return removed


def _bank_from_state(state: dict[str, torch.Tensor], prefix: str, role: str) -> PatchBank:
    """A `PatchBank` holding the saved tensors of one wrapped projection."""
    sizes = state[f"{prefix}{_MARK}sizes"].tolist()
    num_frozen = int(state[f"{prefix}{_MARK}num_frozen"])
    frozen = state[f"{prefix}{_MARK}frozen_weight"]
    bank = PatchBank(role, frozen.shape[1], dtype=frozen.dtype)  # type: ignore[arg-type]
    bank.resize(sizes, num_frozen)
    bank.load_state_dict({k.split(_MARK, 1)[1]: v for k, v in state.items() if k.startswith(prefix + _MARK)})
    return bank


def _serialise(state: dict[str, torch.Tensor]) -> bytes:
    return save(state, metadata={"format": "pt"})  # as peft writes adapter_model.safetensors


__all__ = ["remove_saved_edit", "saved_edits"]
