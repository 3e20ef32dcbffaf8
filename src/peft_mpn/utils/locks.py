"""One writer per output directory: a lock file that names its holder and dies with it.

``directory_lock(path)`` creates ``path/.peft-mpn.lock`` and holds an exclusive ``flock`` on it for as long as the
``with`` block runs. The file records the holder (pid, host, start time, what it does). A second writer, in this
process or another, gets :class:`DirectoryLocked` at once, naming the holder and what to do. The kernel drops a
``flock`` when its process dies, so a lock file left behind by a killed run is stale by construction: the next writer
takes it over (and logs whose it was). Where ``fcntl`` is missing (Windows), the file is created with ``O_EXCL`` and
a lock whose pid no longer runs on this host counts as stale.

>>> with directory_lock("run/"):  # doctest: +SKIP
...     ...  # write into run/
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


logger = logging.getLogger(__name__)
LOCK_NAME = ".peft-mpn.lock"


class DirectoryLocked(RuntimeError):
    """Another live writer holds the lock of a directory."""


def _holder_text(info: dict[str, Any] | None) -> str:
    if not info:
        return "an unknown process (the lock file is empty)"
    since, purpose = info.get("time"), info.get("purpose", "write")
    return f"pid {info.get('pid')} on host {info.get('host')!r} (since {since}, {purpose})"


def read_lock(path: str | os.PathLike) -> dict[str, Any] | None:
    """The holder recorded in a lock file, or ``None`` if it is missing, empty or unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        info = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to someone else
        return True
    return True


def _record(purpose: str) -> bytes:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "purpose": purpose,
    }
    return (json.dumps(info) + "\n").encode("utf-8")


def _locked_error(lock: Path, info: dict[str, Any] | None) -> DirectoryLocked:
    return DirectoryLocked(
        f"{lock.parent} is in use by {_holder_text(info)}; two writers on one directory would lose edits. Wait for "
        f"that run to finish, pass another output directory, or, if that process is gone for good (e.g. on another "
        f"machine), delete {lock}."
    )


@contextlib.contextmanager
def file_lock(lock: str | os.PathLike, purpose: str = "write") -> Iterator[Path]:
    """Hold the lock file ``lock`` (created if missing) for the duration of the block; see the module docstring.

    Raises:
        DirectoryLocked: A live process holds it.
        OSError: The lock file can't be created (e.g. a read-only directory).
    """
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        with _exclusive_file_lock(lock, purpose):
            yield lock
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _locked_error(lock, read_lock(lock)) from None
        try:  # the file may have been removed (and re-created) by its last holder between our open and flock
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        stale = read_lock(lock)
        if stale:
            logger.warning("taking over the stale lock %s of %s, which no longer runs", lock, _holder_text(stale))
        os.ftruncate(fd, 0)
        os.write(fd, _record(purpose))
        os.fsync(fd)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still holding it: a waiting opener then sees a new inode and retries
        os.close(fd)


@contextlib.contextmanager
def _exclusive_file_lock(lock: Path, purpose: str) -> Iterator[None]:  # pragma: no cover - Windows
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            info = read_lock(lock)
            if info and info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid")):
                logger.warning("taking over the stale lock %s of %s, which no longer runs", lock, _holder_text(info))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
                continue
            raise _locked_error(lock, info) from None
    else:
        raise _locked_error(lock, read_lock(lock))
    try:
        os.write(fd, _record(purpose))
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)


def directory_lock(directory: str | os.PathLike, purpose: str = "write") -> contextlib.AbstractContextManager[Path]:
    """Lock ``directory`` (created if missing) for one writer: ``directory/.peft-mpn.lock``; see :func:`file_lock`."""
    return file_lock(Path(directory) / LOCK_NAME, purpose)


def sibling_lock(path: str | os.PathLike, purpose: str = "write") -> contextlib.AbstractContextManager[Path]:
    """Lock an output that is replaced as a whole (``atomic_directory``): ``.NAME.lock`` beside it."""
    path = Path(path)
    return file_lock(path.parent / f".{path.name}.lock", purpose)


__all__ = ["LOCK_NAME", "DirectoryLocked", "directory_lock", "file_lock", "read_lock", "sibling_lock"]
