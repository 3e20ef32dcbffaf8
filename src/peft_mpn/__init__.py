"""peft-mpn: Multilingual Patch Neurons (MPN) for cross-lingual model editing, as a PEFT method."""

from __future__ import annotations


__version__ = "0.1.0"
