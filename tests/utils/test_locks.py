"""One writer per directory: a second writer is refused with the holder's name, a dead holder's lock is taken over,
and an edit stream cleans the debris of a killed save."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from peft_mpn.utils.locks import LOCK_NAME, DirectoryLocked, directory_lock, read_lock, sibling_lock
from peft_mpn.utils.paths import check_readable_file, check_writable_dir, remove_orphans


def test_second_writer_is_refused_with_the_holder_and_the_way_out(tmp_path):
    with directory_lock(tmp_path, "edit") as lock:
        info = read_lock(lock)
        assert info["pid"] == os.getpid() and info["purpose"] == "edit" and info["host"] and info["time"]
        message = rf"in use by pid {os.getpid()} on host .*delete .*{LOCK_NAME}"
        with pytest.raises(DirectoryLocked, match=message), directory_lock(tmp_path):
            pass
    assert not (tmp_path / LOCK_NAME).exists()  # released: the lock file is gone
    with directory_lock(tmp_path):  # and the directory can be locked again
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_lock_held_by_another_live_process_is_refused(tmp_path):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other run: lock, tell the parent, wait to be killed
        try:
            with directory_lock(tmp_path, "other run"):
                os.write(write, b"locked")
                time.sleep(30)
        finally:
            os._exit(0)
    try:
        assert os.read(read, 6) == b"locked"
        with pytest.raises(DirectoryLocked, match=rf"pid {pid} .*other run"), directory_lock(tmp_path):
            pass
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # killed: the kernel dropped its lock; the file with its record stays behind and is taken over
    assert read_lock(tmp_path / LOCK_NAME)["pid"] == pid
    with directory_lock(tmp_path) as lock:
        assert read_lock(lock)["pid"] == os.getpid()


def test_a_stale_lock_file_from_a_dead_pid_is_taken_over(tmp_path, caplog):
    stale = {"pid": 2**22 + 12345, "host": "elsewhere", "time": "2026-01-01T00:00:00Z", "purpose": "edit"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with caplog.at_level("WARNING"), directory_lock(tmp_path) as lock:
        assert read_lock(lock)["pid"] == os.getpid()
    assert "stale lock" in caplog.text and str(stale["pid"]) in caplog.text


def test_sibling_lock_sits_beside_a_replaced_output(tmp_path):
    with sibling_lock(tmp_path / "base") as lock:
        assert lock == tmp_path / ".base.lock"
        with pytest.raises(DirectoryLocked), sibling_lock(tmp_path / "base"):
            pass


def test_writable_dir_checks_permissions_and_free_space(tmp_path):
    assert check_writable_dir(tmp_path / "new" / "out").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_writable_dir(tmp_path / "file", name="--output")
    with pytest.raises(ValueError, match=r"--output .* has .* free, but one checkpoint needs about"):
        check_writable_dir(tmp_path, need_bytes=1 << 62, name="--output")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match=r"--output .*ro' is not writable \(Permission denied\)"):
            check_writable_dir(locked, name="--output")


def test_readable_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--edits .*missing.jsonl' does not exist"):
        check_readable_file(tmp_path / "missing.jsonl", "--edits")
    with pytest.raises(ValueError, match="is a directory"):
        check_readable_file(tmp_path, "--edits")
    check_readable_file(None, "--memory")


def test_remove_orphans(tmp_path):
    (tmp_path / ".tmp-abc").mkdir()
    (tmp_path / ".tmp-abc" / "x").write_text("x")
    (tmp_path / "current").mkdir()
    assert [p.name for p in remove_orphans(tmp_path, (".tmp-*",))] == [".tmp-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]
