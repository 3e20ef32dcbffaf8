"""peft-mpn: Multilingual Patch Neurons (MPN) for cross-lingual model editing, as a PEFT method.

``import peft_mpn`` registers the ``"MPN"`` PEFT type, after which ``get_peft_model(model, MPNConfig())``,
``PeftModel.from_pretrained`` and transformers' ``model.load_adapter`` work with MPN adapters.
"""

from __future__ import annotations

from .causal_editor import CausalLMEditor, GenerationEditResult
from .collator import MultilingualEditCollator
from .config import FFN_PRESETS, FFNPreset, MPNConfig
from .data.generation import GenerationEditRecord, read_generation_records, write_generation_records
from .data.records import EditRecord, read_records, write_records
from .editor import EditResult, MPNEditor
from .generation_collator import EncodedEdit, GenerationEditCollator
from .generation_fastpath import LMSuffix
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
    # classification edits
    "EditConfig",
    "EditRecord",
    "EditResult",
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
