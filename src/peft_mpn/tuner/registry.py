"""Registration of the ``"MPN"`` PEFT type with peft's tuner mappings.

peft's ``register_peft_method`` only accepts names that are already members of its closed ``PeftType`` enum, so
MPN brings a ``str`` enum of its own and writes it into the three mappings that ``get_peft_model``,
``PeftConfig.from_pretrained`` and ``PeftModel.from_pretrained`` read. ``import peft_mpn`` does this once; it must
happen before ``PeftModel.from_pretrained`` sees an ``adapter_config.json`` with ``"peft_type": "MPN"``.
"""

from __future__ import annotations

from peft import mapping

from .config import MPN, PREFIX, MPNConfig, MPNPeftType
from .hub import install_push_to_hub
from .model import MPNModel
from .verify import install_load_checks


__all__ = ["MISSING_IMPORT_HINT", "MPN", "PREFIX", "MPNPeftType", "is_registered", "register"]

MISSING_IMPORT_HINT = (
    "This adapter has peft_type 'MPN'. Run `import peft_mpn` before `PeftModel.from_pretrained` or "
    "`model.load_adapter`: peft has no plugin entry point, so the MPN type exists only once peft_mpn is imported."
)


def register() -> None:
    """Write MPN into peft's config, tuner and prefix mappings. Safe to call more than once."""
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[MPN] = MPNConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[MPN] = MPNModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[MPN] = PREFIX
    install_push_to_hub()
    install_load_checks()


def is_registered() -> bool:
    """Whether peft currently knows the MPN type."""
    return MPN in mapping.PEFT_TYPE_TO_TUNER_MAPPING
