"""peft-mpn: Multilingual Patch Neurons (MPN) for cross-lingual model editing, as a PEFT method.

``import peft_mpn`` registers the ``"MPN"`` PEFT type, after which ``get_peft_model(model, MPNConfig())``,
``PeftModel.from_pretrained`` and transformers' ``model.load_adapter`` work with MPN adapters.
"""

from __future__ import annotations

from .config import FFN_PRESETS, FFNPreset, MPNConfig
from .layer import MPNLayer, PatchBank
from .model import MPNModel
from .registry import MPN, MPNPeftType, is_registered, register


__version__ = "0.1.0"

register()

__all__ = [
    "FFN_PRESETS",
    "MPN",
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
