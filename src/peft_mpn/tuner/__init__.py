"""The PEFT method: `MPNConfig`, the patch layers, `MPNModel`, its registration with peft, model card and hub push.

It knows nothing about editing: it adds, freezes, saves, loads and merges patch neurons.
"""

from __future__ import annotations

from .registry import register as _register


_register()  # whoever loads the tuner has MPN known to peft (``import peft_mpn`` defers this until peft loads)
