"""peft-mpn: Multilingual Patch Neurons (MPN) for cross-lingual model editing, as a PEFT method.

``import peft_mpn`` registers the ``"MPN"`` PEFT type, after which ``get_peft_model(model, MPNConfig())``,
``PeftModel.from_pretrained`` and transformers' ``model.load_adapter`` work with MPN adapters.
"""

from __future__ import annotations

from .collator import MultilingualEditCollator
from .config import FFN_PRESETS, FFNPreset, MPNConfig
from .data.records import EditRecord, read_records, write_records
from .editor import EditResult, MPNEditor
from .layer import MPNLayer, PatchBank
from .losses import EditConfig
from .model import MPNModel
from .registry import MPN, MPNPeftType, is_registered, register
from .trainer import MPNTrainer


__version__ = "0.1.0"

register()

__all__ = [
    "FFN_PRESETS",
    "MPN",
    "EditConfig",
    "EditRecord",
    "EditResult",
    "MPNEditor",
    "MPNTrainer",
    "MultilingualEditCollator",
    "read_records",
    "write_records",
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
