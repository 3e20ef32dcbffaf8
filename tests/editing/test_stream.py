"""EditStream: the resumable edit loop, atomic checkpoints, resume after a crash, and errors that name the fix."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from torch import nn

from peft_mpn.editing.stream import CHECKPOINT_FORMAT, EditStream, load_checkpoint, save_checkpoint


@dataclass
class ToyRecord:
    id: str
    texts: dict[str, str]

    def text(self, lang: str) -> str:
        return self.texts[lang]


@dataclass
class ToyResult:
    id: str
    success: bool
    skipped: bool = False
    method: str = "toy"
    order: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class ToyStrategy:
    """The edited state is the list of edited ids, saved as JSON."""

    def __init__(self) -> None:
        self.edited: list[str] = []

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True)
        (Path(directory) / "edited.json").write_text(json.dumps(self.edited))

    def load(self, directory: str | os.PathLike) -> None:
        self.edited = json.loads((Path(directory) / "edited.json").read_text())


class ToyEditor(EditStream):
    """Edits by appending the id to the strategy's state; records in ``correct`` are already right."""

    edit_kind = "toy"
    result_class = ToyResult

    def __init__(self, languages=("en", "fr"), method="toy", correct=(), crash_at=None) -> None:
        self.method = method
        self.languages = list(languages)
        self.strategy = ToyStrategy()
        self.model = nn.Linear(1, 1)
        self.progress = False
        self.memory: list[str] = []
        self.correct = set(correct)
        self.crash_at = crash_at

    def edit(self, record: ToyRecord) -> ToyResult:
        if record.id == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        self.strategy.edited.append(record.id)
        return ToyResult(record.id, success=True, method=self.method, order=len(self.strategy.edited))

    def is_correct(self, record: ToyRecord) -> bool:
        return record.id in self.correct

    def add_to_memory(self, texts) -> None:
        self.memory.extend(texts)

    def _record(self, record) -> ToyRecord:
        return record if isinstance(record, ToyRecord) else ToyRecord(**record)


def records(n: int = 6) -> list[ToyRecord]:
    return [ToyRecord(f"r{i}", {"en": f"en{i}", "fr": f"fr{i}"}) for i in range(n)]


def saved_state(directory: Path) -> dict:
    return json.loads((directory / "current" / "state.json").read_text())


# ---------------------------------------------------------------------- save_checkpoint / load_checkpoint
def test_checkpoint_round_trip(tmp_path):
    assert load_checkpoint(tmp_path / "none", "toy") is None
    current = save_checkpoint(tmp_path, {"kind": "toy", "results": [1]}, lambda d: d.mkdir())
    assert current == tmp_path / "current" and (current / "weights").is_dir()
    state, weights = load_checkpoint(tmp_path, "toy")
    assert state == {"kind": "toy", "results": [1], "format": CHECKPOINT_FORMAT}
    assert weights == tmp_path / "current" / "weights"
    save_checkpoint(tmp_path, {"kind": "toy", "results": [1, 2]}, lambda d: d.mkdir())
    assert load_checkpoint(tmp_path, "toy")[0]["results"] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]  # no temporary or old folder left


def test_failed_save_keeps_the_previous_checkpoint_and_no_temporary_folder(tmp_path):
    save_checkpoint(tmp_path, {"kind": "toy", "results": [1]}, lambda d: d.mkdir())

    def disk_full(directory: Path) -> None:
        directory.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"kind": "toy", "results": [1, 2]}, disk_full)
    assert load_checkpoint(tmp_path, "toy")[0]["results"] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]


def test_a_crash_between_the_two_renames_is_completed_on_load(tmp_path):
    save_checkpoint(tmp_path, {"kind": "toy", "results": [1]}, lambda d: d.mkdir())
    os.replace(tmp_path / "current", tmp_path / ".old")  # the first rename happened, the second did not
    state, weights = load_checkpoint(tmp_path, "toy")
    assert state["results"] == [1] and weights.is_dir() and not (tmp_path / ".old").exists()


def test_checkpoint_of_another_kind_or_format_is_refused(tmp_path):
    save_checkpoint(tmp_path, {"kind": "generation"}, lambda d: d.mkdir())
    with pytest.raises(ValueError, match="not a classification-edit checkpoint.*use another checkpoint_dir"):
        load_checkpoint(tmp_path, "classification")
    state = saved_state(tmp_path) | {"format": CHECKPOINT_FORMAT + 1}
    (tmp_path / "current" / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="format 2"):
        load_checkpoint(tmp_path, "generation")


def test_checkpoint_without_a_kind_holds_classification_edits(tmp_path):
    """Classification checkpoints written before checkpoints named their kind still resume."""
    (tmp_path / "current" / "weights").mkdir(parents=True)
    legacy = {"format": 1, "method": "mpn", "languages": ["en"], "ids": ["a"], "results": []}
    (tmp_path / "current" / "state.json").write_text(json.dumps(legacy))
    assert load_checkpoint(tmp_path, "classification")[0] == legacy
    with pytest.raises(ValueError, match="holds classification edits"):
        load_checkpoint(tmp_path, "generation")


# ---------------------------------------------------------------------- edit_stream
def test_stream_skips_correct_records_and_adds_edited_texts_to_the_memory():
    editor = ToyEditor(correct={"r1"})
    results = editor.edit_stream(records(3) + [{"id": "r3", "texts": {"en": "en3", "fr": "fr3"}}])
    assert [(r.id, r.skipped, r.success) for r in results] == [
        ("r0", False, True),
        ("r1", True, True),
        ("r2", False, True),
        ("r3", False, True),
    ]
    assert editor.strategy.edited == ["r0", "r2", "r3"]
    assert editor.memory == ["en0", "fr0", "en2", "fr2", "en3", "fr3"]
    assert editor.edit_stream(records(2), skip_correct=False)[1].skipped is False


def test_stream_checks_its_arguments_before_editing(tmp_path):
    editor = ToyEditor()
    for every in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1"):
            editor.edit_stream(records(2), checkpoint_dir=tmp_path / "ck", checkpoint_every=every)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        editor.edit_stream(records(2), checkpoint_dir=tmp_path / "afile")
    assert editor.strategy.edited == []  # nothing was edited


def test_stream_checkpoints_every_n_edits_and_at_the_end(tmp_path, monkeypatch):
    editor = ToyEditor(correct={"r1"})
    saved = []
    monkeypatch.setattr(ToyEditor, "_checkpoint", lambda self, d, ids, results: saved.append(len(results)))
    editor.edit_stream(records(6), checkpoint_dir=tmp_path, checkpoint_every=2)
    assert saved == [3, 5, 6]  # after edits 2 and 4 (r1 was skipped), and at the end


def test_resume_after_a_crash_redoes_and_loses_nothing(tmp_path):
    reference = ToyEditor(correct={"r2"})
    expected = reference.edit_stream(records(), checkpoint_dir=tmp_path / "ref", checkpoint_every=2)

    crashing = ToyEditor(correct={"r2"}, crash_at="r4")
    with pytest.raises(KeyboardInterrupt):
        crashing.edit_stream(records(), checkpoint_dir=tmp_path / "run", checkpoint_every=2)
    state = saved_state(tmp_path / "run")
    assert [r["id"] for r in state["results"]] == ["r0", "r1"]  # the checkpoint after 2 edits; r3 was lost
    assert state["kind"] == "toy" and state["ids"] == [r.id for r in records()]

    resumed = ToyEditor(correct={"r2"})  # a fresh process: nothing edited, empty memory
    results = resumed.edit_stream(records(), checkpoint_dir=tmp_path / "run", checkpoint_every=2)
    assert [r.to_dict() for r in results] == [r.to_dict() for r in expected]
    assert resumed.strategy.edited == reference.strategy.edited  # loaded, then continued: no edit redone
    assert resumed.memory == reference.memory
    again = ToyEditor(correct={"r2"})
    assert [r.to_dict() for r in again.edit_stream(records(), checkpoint_dir=tmp_path / "run")] == [
        r.to_dict() for r in expected
    ]
    assert again.strategy.edited == reference.strategy.edited  # everything was done: nothing edited again


def test_stream_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="ids must be unique"):
        ToyEditor().edit_stream(records(2) + records(1))
    ToyEditor().edit_stream(records(3), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another stream of records.*same records"):
        ToyEditor().edit_stream(records(3)[1:], checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"method 'toy' with languages \['en', 'fr'\].*same settings"):
        ToyEditor(method="other").edit_stream(records(3), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="same settings"):
        ToyEditor(languages=["en"]).edit_stream(records(3), checkpoint_dir=tmp_path)


# ---------------------------------------------------------------------- one writer, no debris
def test_a_second_stream_on_the_same_checkpoint_dir_is_refused(tmp_path):
    from peft_mpn.utils.locks import DirectoryLocked

    class Nested(ToyEditor):
        def edit(self, record):
            if record.id == "r1":  # while the first stream holds the directory, a second one starts
                with pytest.raises(DirectoryLocked, match="in use by pid .*toy edit_stream"):
                    ToyEditor().edit_stream(records(), checkpoint_dir=tmp_path)
            return super().edit(record)

    assert len(Nested().edit_stream(records(), checkpoint_dir=tmp_path)) == 6
    assert saved_state(tmp_path)["ids"] == [r.id for r in records()]  # the first run's edits are all there


def test_resume_removes_unfinished_checkpoint_folders(tmp_path):
    editor = ToyEditor(crash_at="r3")
    with pytest.raises(KeyboardInterrupt):
        editor.edit_stream(records(), checkpoint_dir=tmp_path, checkpoint_every=1)
    (tmp_path / ".tmp-killed").mkdir()  # a save killed by SIGKILL leaves its temporary folder
    (tmp_path / ".tmp-killed" / "state.json").write_text("{")
    results = ToyEditor().edit_stream(records(), checkpoint_dir=tmp_path, checkpoint_every=1)
    assert [r.id for r in results] == [r.id for r in records()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]  # no debris, no lock file left


def test_stream_checks_the_checkpoint_dir_before_the_first_edit(tmp_path, monkeypatch):
    from peft_mpn.utils import paths

    monkeypatch.setattr(paths.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    editor = ToyEditor()
    with pytest.raises(ValueError, match="checkpoint_dir .* has 0.0 MiB free, but one checkpoint needs about"):
        editor.edit_stream(records(), checkpoint_dir=tmp_path / "run")
    assert editor.strategy.edited == []  # refused before any work


def test_an_empty_stream_warns(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        assert ToyEditor().edit_stream([], checkpoint_dir=tmp_path / "run") == []
    assert "got no records" in caplog.text and not (tmp_path / "run").exists()
