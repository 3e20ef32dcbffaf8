"""The package version, at the bottom of the import order so that every layer can read it."""

from __future__ import annotations


__version__ = "0.1.0"
