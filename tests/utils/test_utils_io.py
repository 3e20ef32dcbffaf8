"""utils.io: atomic directory writes."""

from __future__ import annotations

import pytest

from peft_mpn.utils.io import atomic_directory, check_replaceable


def test_atomic_directory_replaces_the_old_one(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old directory left


def test_atomic_directory_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("crash mid-save")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_with_a_marker_never_deletes_other_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="holds other files"), atomic_directory(data, marker="config.json") as tmp:
        (tmp / "config.json").write_text("{}")
    assert (data / "train.jsonl").read_text() == "{}\n"  # untouched
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_replaceable(tmp_path / "afile", "config.json", "--output")

    model = tmp_path / "model"  # an earlier output (it holds the marker), an empty directory, a missing one: replaced
    model.mkdir()
    (model / "config.json").write_text("old")
    (tmp_path / "empty").mkdir()
    for target in (model, tmp_path / "empty", tmp_path / "new"):
        with atomic_directory(target, marker="config.json") as tmp:
            (tmp / "config.json").write_text("new")
        assert sorted(p.name for p in target.iterdir()) == ["config.json"]
        assert (target / "config.json").read_text() == "new"
