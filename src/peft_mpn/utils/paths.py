"""Path checks made before work starts, so that a bad path costs a second and not the edits already made."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


MIB = 1 << 20


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.2f} GiB"


def check_writable_dir(path: str | os.PathLike, need_bytes: int = MIB, name: str = "output") -> Path:
    """Create ``path`` if missing and check that a file can be written there and that ``need_bytes`` are free.

    Args:
        path: The directory.
        need_bytes: Free space needed (e.g. the size of one checkpoint).
        name: What the path is, for the message (``"--output"``, ``"checkpoint_dir"``).

    Returns:
        The directory.

    Raises:
        ValueError: ``path`` is a file, can't be created or written, or the disk has less than ``need_bytes`` free.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a file; pass a directory (it is created if missing).")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(
            f"{name} {str(path)!r} is not writable ({reason}); pass a directory you can write to."
        ) from exc
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise ValueError(
            f"{name} {str(path)!r} has {_size(free)} free, but one checkpoint needs about {_size(need_bytes)}; free "
            "some space or pass a directory on another disk."
        )
    return path


def check_readable_file(path: str | os.PathLike | None, name: str) -> None:
    """``FileNotFoundError``/``ValueError`` in one line unless ``path`` is a readable file (``None`` passes)."""
    if path is None:
        return
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist; pass the path of an existing file.")
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a directory; pass a file.")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{name} {str(path)!r} is not readable (permission denied).")


def remove_orphans(directory: str | os.PathLike, patterns: tuple[str, ...]) -> list[Path]:
    """Delete the leftovers of interrupted saves (``patterns``, globs) in ``directory``; returns what was removed.

    Call it only while holding the directory's lock: a temporary folder of a live writer would go too.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for pattern in patterns:
        for path in directory.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


__all__ = ["MIB", "check_readable_file", "check_writable_dir", "remove_orphans"]
