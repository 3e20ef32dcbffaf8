"""A GRACE-style peer (Hartvigsen et al., 2023): a codebook at the patched layer, one key per edit.

Each edit adds an entry to a codebook at the edited FFN block: a *key* (the FFN input of the edit where the patch
methods read it, [CLS]), a *deferral radius* and a *value*. When an input's FFN input at [CLS] lies within the
radius of its nearest key, the value *replaces* the output of the FFN output projection there; otherwise the layer
is untouched. Only the value is trained (the edit loss, until the edit is right, as the other methods stop). This is
the other end of the trade-off from the patches: inputs outside every radius are exactly unchanged (locality by
construction), and transfer reaches only the inputs that fall inside a radius.

Simplification against GRACE: a new key that falls within (its radius + the nearest key's radius) of an earlier key
*splits* the two (both radii become half their distance), whatever the labels; GRACE expands a radius instead when
both edits have the same label. Used through the editors with ``method="grace"``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.checks import is_int, is_real
from ..utils.io import atomic_write_json


@dataclass
class GraceConfig:
    """How the GRACE-style codebook edits. The default radius was chosen on the validation split.

    Args:
        radius: Deferral radius of a new key: the Euclidean distance, in the FFN input's own units (the output of
            the layer norm before the FFN), within which an input uses the key's value. The default was chosen on
            the validation split of the benchmark for multilingual-e5-small (docs/benchmark.md); other models need
            their own.
        lr: Adam learning rate of the value, in units of the RMS of the layer's own output at the edit (the value
            starts as that output, so the edit changes nothing at step 0).
        max_steps: Step cap per edit (it also stops as soon as the edit is right).
    """

    radius: float = 1.0
    lr: float = 0.1
    max_steps: int = 100

    def __post_init__(self) -> None:
        if not is_real(self.radius) or self.radius <= 0 or math.isinf(self.radius):
            raise ValueError(
                f"GraceConfig.radius must be a finite distance > 0 (the deferral radius around each key, in FFN-input "
                f"units; e.g. 3.0), got {self.radius!r}."
            )
        if not is_real(self.lr) or self.lr <= 0:
            raise ValueError(f"GraceConfig.lr must be a finite number > 0, got {self.lr!r}.")
        if not is_int(self.max_steps, 1):
            raise ValueError(f"GraceConfig.max_steps must be an int >= 1, got {self.max_steps!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return asdict(self)


class GraceCodebook(nn.Module):
    """Keys, deferral radii and values of the edits, and the forward hooks that apply them.

    Args:
        in_features: Width of the FFN input (the keys).
        out_features: Width of the FFN output projection (the values).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(0, in_features))
        self.register_buffer("radii", torch.zeros(0))
        self.register_buffer("frozen_values", torch.zeros(0, out_features))
        self.value: nn.Parameter | None = None  # the value being trained (the newest entry), if any, in units of
        self.value_scale = 1.0  # the RMS of the layer's own output there, so that one lr fits every model
        self.ids: list[str] = []
        self._query: torch.Tensor | None = None
        self._init_pending = False
        self.enabled = True

    def __len__(self) -> int:
        return self.keys.shape[0]

    def values(self) -> torch.Tensor:
        """Every value, oldest first (the trained one last while an edit runs)."""
        if self.value is None:
            return self.frozen_values
        return torch.cat([self.frozen_values, (self.value * self.value_scale).unsqueeze(0)])

    # ------------------------------------------------------------------ hooks
    def stash_query(self, _module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the FFN input projection: keep its input's [CLS] row for the value hook."""
        self._query = args[0][:, 0] if args[0].dim() == 3 else None

    def replace_output(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the FFN output projection: the nearest key's value at [CLS] where within its radius."""
        query, self._query = self._query, None
        if not self.enabled or len(self) == 0 or query is None or output.dim() != 3:
            return output
        distances = torch.cdist(query.to(self.keys.dtype), self.keys)
        nearest, index = distances.min(dim=1)
        hit = nearest <= self.radii[index]
        if not bool(hit.any()):
            return output
        if self._init_pending and self.value is not None:
            newest = hit & (index == len(self) - 1)
            if bool(newest.any()):  # the new value starts as the layer's own output there: no change at step 0
                with torch.no_grad():
                    start = output[int(newest.nonzero()[0, 0]), 0].to(self.value.dtype)
                    self.value_scale = float(start.pow(2).mean().sqrt().clamp_min(1e-6))
                    self.value.copy_(start / self.value_scale)
                self._init_pending = False
        values = self.values()[index].to(output.dtype)
        first = torch.where(hit.unsqueeze(1), values, output[:, 0])
        return torch.cat([first.unsqueeze(1), output[:, 1:]], dim=1)

    # ------------------------------------------------------------------ entries
    def add(self, key: torch.Tensor, radius: float, edit_id: str) -> None:
        """Add an entry (trainable value) for ``key``; split radii with the nearest key if their balls overlap."""
        self._saved_radii = self.radii.clone()
        key = key.detach().to(self.keys.dtype).reshape(1, -1)
        if len(self):
            distances = torch.cdist(key, self.keys)[0]
            nearest, index = distances.min(dim=0)
            if float(nearest) < radius + float(self.radii[index]):
                half = float(nearest) / 2
                self.radii[index] = min(float(self.radii[index]), half)
                radius = min(radius, half)
        self.keys = torch.cat([self.keys, key])
        self.radii = torch.cat([self.radii, self.radii.new_tensor([radius])])
        self.value = nn.Parameter(self.frozen_values.new_zeros(self.frozen_values.shape[1]))
        self._init_pending = True
        self.ids.append(edit_id)

    def freeze(self) -> None:
        """Move the trained value into the frozen values."""
        if self.value is not None:
            value = (self.value.detach() * self.value_scale).unsqueeze(0)
            self.frozen_values = torch.cat([self.frozen_values, value])
            self.value, self.value_scale = None, 1.0
        self._init_pending = False

    def pop(self) -> None:
        """Remove the newest (trainable) entry and restore the radii it changed."""
        if self.value is None:
            raise ValueError("the newest GRACE entry is frozen (or there is none); nothing to undo.")
        self.keys = self.keys[:-1].clone()
        self.radii = self._saved_radii
        self.value = None
        self.ids.pop()
        self._init_pending = False

    def remove(self, edit_id: str) -> int:
        """Remove the frozen entries of ``edit_id`` (radii it split stay split). Returns how many were removed."""
        keep = [i for i, known in enumerate(self.ids) if known != edit_id]
        removed = len(self.ids) - len(keep)
        if removed == 0:
            raise ValueError(f"no GRACE entry fixes edit {edit_id!r}; the codebook has {len(self.ids)} entries.")
        if self.value is not None:
            raise ValueError("an edit is being trained; finish it before removing entries.")
        index = torch.tensor(keep, dtype=torch.long)
        self.keys, self.radii = self.keys[index].clone(), self.radii[index].clone()
        self.frozen_values = self.frozen_values[index].clone()
        self.ids = [self.ids[i] for i in keep]
        return removed

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``grace.safetensors`` and ``grace.json`` (the edit ids) into ``directory``."""
        if self.value is not None:
            raise ValueError("an edit is being trained; freeze it before saving the GRACE codebook.")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"keys": self.keys, "radii": self.radii, "values": self.frozen_values}
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path / "grace.safetensors"))
        atomic_write_json(path / "grace.json", {"ids": self.ids})

    def load(self, directory: str | os.PathLike) -> None:
        """Restore what :meth:`save` wrote."""
        path = Path(directory)
        tensors = load_file(str(path / "grace.safetensors"))
        ids = json.loads((path / "grace.json").read_text(encoding="utf-8"))["ids"]
        if len(ids) != tensors["keys"].shape[0] or tensors["keys"].shape[1] != self.keys.shape[1]:
            raise ValueError(f"the GRACE codebook in {path} does not fit this model's FFN block.")
        self.keys, self.radii, self.frozen_values = tensors["keys"], tensors["radii"], tensors["values"]
        self.value, self.ids, self._init_pending = None, list(ids), False


__all__ = ["GraceCodebook", "GraceConfig"]
