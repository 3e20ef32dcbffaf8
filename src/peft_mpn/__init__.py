"""peft-mpn: Multilingual Patch Neurons (MPN) for cross-lingual model editing, as a PEFT method.

``import peft_mpn`` registers the ``"MPN"`` PEFT type, after which ``get_peft_model(model, MPNConfig())``,
``PeftModel.from_pretrained`` and transformers' ``model.load_adapter`` work with MPN adapters.
"""

from __future__ import annotations

from .data.generation import GenerationEditRecord, read_generation_records, write_generation_records
from .data.records import EditRecord, read_records, write_records
from .editing.losses import EditConfig
from .editing.trainer import MPNTrainer
from .tasks.classification.collator import MultilingualEditCollator
from .tasks.classification.editor import EditResult, MPNEditor
from .tasks.generation.collator import EncodedEdit, GenerationEditCollator
from .tasks.generation.editor import CausalLMEditor, GenerationEditResult
from .tasks.generation.fastpath import LMSuffix
from .tuner.config import FFN_PRESETS, FFNPreset, MPNConfig
from .tuner.layer import MPNLayer, PatchBank
from .tuner.model import MPNModel
from .tuner.registry import MPN, MPNPeftType, is_registered, register
from .utils.version import __version__


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
