"""SHA-256 of files, streamed, for the checksums written into saved adapters and for base-model fingerprints."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike, *, cache: bool = False) -> str:
    """The hex SHA-256 of a file's bytes.

    Args:
        path: The file.
        cache: Remember the digest by (real path, size, modification time), for large files hashed repeatedly
            (a base model's weights, fingerprinted at every checkpoint).
    """
    path = Path(path)
    key = None
    if cache:
        stat = path.stat()
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        if key in _CACHE:
            return _CACHE[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    hexdigest = digest.hexdigest()
    if key is not None:
        _CACHE[key] = hexdigest
    return hexdigest


__all__ = ["sha256_file"]
