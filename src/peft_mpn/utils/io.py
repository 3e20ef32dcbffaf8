"""Atomic file writes: a crash mid-save never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then move it into place with ``os.replace``.

    The file gets the usual permissions for new files (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(rows: Iterable[Any], path: str | os.PathLike) -> Path:
    """Write JSON-serialisable rows as JSON lines, atomically; parent folders are created."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return atomic_write_text(path, text)


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Read a JSON-lines file, one value per line (blank lines skipped)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def check_replaceable(path: str | os.PathLike, marker: str | None = None, name: str = "output") -> None:
    """Raise ``ValueError`` unless :func:`atomic_directory` may replace ``path``.

    ``path`` may be missing, an empty directory, or (with ``marker``) a directory holding that file, i.e. an earlier
    output of the same kind. Anything else (a file, a directory of other files) would be lost.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a file; pass a directory path (it is created if missing).")
    if any(path.iterdir()) and (marker is None or not (path / marker).is_file()):
        raise ValueError(
            f"{name} {str(path)!r} is a directory that holds other files, which saving here would delete; pass a new "
            f"or empty directory" + (f" (or an earlier output with {marker})." if marker else ".")
        )


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """Write a directory atomically: fill the yielded temporary sibling, which then replaces ``path``.

    On an exception the temporary directory is removed and ``path`` is left as it was.

    Args:
        path: The directory to write.
        marker: A file that an earlier output at ``path`` holds (e.g. ``"config.json"``). ``path`` is then replaced
            only if it is missing, empty or holds ``marker``; otherwise ``ValueError`` (see
            :func:`check_replaceable`). ``None`` replaces whatever is there.
    """
    path = Path(path)
    if marker is not None:
        check_replaceable(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
