"""peft-mpn: Multilingual Patch Neurons (MPN) for cross-lingual model editing, as a PEFT method.

``import peft_mpn`` makes the ``"MPN"`` PEFT type known to peft, after which ``get_peft_model(model, MPNConfig())``,
``PeftModel.from_pretrained`` and transformers' ``model.load_adapter`` work with MPN adapters.

The import itself is cheap (the ``peft-mpn`` command starts in well under a second): the public names below load on
first use, and the registration with peft happens as soon as peft is imported, before any of its functions can run
(right away if peft is already imported). Importing any ``peft_mpn.tuner`` module registers too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from .utils.version import __version__


if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .data.generation import GenerationEditRecord, read_generation_records, write_generation_records
    from .data.records import EditRecord, read_records, write_records
    from .editing.baselines import BaselineConfig
    from .editing.grace import GraceConfig
    from .editing.losses import EditConfig
    from .editing.trainer import MPNTrainer
    from .tasks.classification.collator import MultilingualEditCollator
    from .tasks.classification.editor import EditResult, MPNEditor
    from .tasks.generation.collator import EncodedEdit, GenerationEditCollator
    from .tasks.generation.editor import CausalLMEditor, GenerationEditResult
    from .tasks.generation.fastpath import LMLayerSuffix, LMSuffix
    from .tuner.config import FFN_PRESETS, FFNPreset, MPNConfig
    from .tuner.layer import MPNLayer, PatchBank
    from .tuner.model import MPNModel
    from .tuner.registry import MPN, MPNPeftType, is_registered, register

_EXPORTS = {
    "GenerationEditRecord": "data.generation",
    "read_generation_records": "data.generation",
    "write_generation_records": "data.generation",
    "EditRecord": "data.records",
    "read_records": "data.records",
    "write_records": "data.records",
    "BaselineConfig": "editing.baselines",
    "GraceConfig": "editing.grace",
    "EditConfig": "editing.losses",
    "MPNTrainer": "editing.trainer",
    "MultilingualEditCollator": "tasks.classification.collator",
    "EditResult": "tasks.classification.editor",
    "MPNEditor": "tasks.classification.editor",
    "EncodedEdit": "tasks.generation.collator",
    "GenerationEditCollator": "tasks.generation.collator",
    "CausalLMEditor": "tasks.generation.editor",
    "GenerationEditResult": "tasks.generation.editor",
    "LMLayerSuffix": "tasks.generation.fastpath",
    "LMSuffix": "tasks.generation.fastpath",
    "FFN_PRESETS": "tuner.config",
    "FFNPreset": "tuner.config",
    "MPNConfig": "tuner.config",
    "MPNLayer": "tuner.layer",
    "PatchBank": "tuner.layer",
    "MPNModel": "tuner.model",
    "MPN": "tuner.registry",
    "MPNPeftType": "tuner.registry",
    "is_registered": "tuner.registry",
    "register": "tuner.registry",
}
#: Submodules reachable as attributes (``peft_mpn.models``, ``peft_mpn.workflow``...), loaded on first use.
_SUBMODULES = ("benchmark", "cli", "data", "editing", "models", "tasks", "tuner", "utils", "workflow")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})


class _RegisterWithPeft(importlib.abc.MetaPathFinder):
    """Registers MPN right after ``peft`` is imported (``peft_mpn.tuner`` registers when it loads)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "peft":
            return None
        sys.meta_path.remove(self)  # once; the real finders locate peft
        spec = importlib.util.find_spec("peft")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                importlib.import_module(f"{__name__}.tuner")

        spec.loader = _Loader()
        return spec


if "peft" in sys.modules:
    importlib.import_module(f"{__name__}.tuner")
elif not any(isinstance(finder, _RegisterWithPeft) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithPeft())

__all__ = [
    "FFN_PRESETS",
    "MPN",
    # classification edits
    "BaselineConfig",
    "EditConfig",
    "EditRecord",
    "EditResult",
    "GraceConfig",
    "MPNEditor",
    "MPNTrainer",
    "MultilingualEditCollator",
    "read_records",
    "write_records",
    # generation edits of decoder LMs (token-level patch neurons)
    "CausalLMEditor",
    "EncodedEdit",
    "GenerationEditCollator",
    "GenerationEditRecord",
    "GenerationEditResult",
    "LMLayerSuffix",
    "LMSuffix",
    "read_generation_records",
    "write_generation_records",
    # the tuner
    "FFNPreset",
    "MPNConfig",
    "MPNLayer",
    "MPNModel",
    "MPNPeftType",
    "PatchBank",
    "__version__",
    "is_registered",
    "register",
]
