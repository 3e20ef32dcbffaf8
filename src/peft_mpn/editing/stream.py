"""`EditStream`: edit records in order, each on top of the earlier ones, with atomic checkpoints to resume from.

A checkpoint directory holds ``current/``: ``state.json`` (the stream's settings, record ids and results so far)
and ``weights/`` (the edited state, as the editor's strategy saves it). A new checkpoint is written into a temporary
folder beside it and swapped in with two renames (``current`` -> ``.old``, temporary -> ``current``), so a crash at
any moment leaves one complete checkpoint behind: ``current/``, or ``.old/`` between the two renames.

>>> class MyEditor(EditStream): ...                                   # doctest: +SKIP
>>> results = MyEditor(...).edit_stream(records, checkpoint_dir="run/")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tqdm.auto import tqdm

from ..utils.checks import is_int
from ..utils.io import atomic_write_json
from ..utils.locks import directory_lock
from ..utils.paths import MIB, check_writable_dir, remove_orphans


if TYPE_CHECKING:
    from torch import nn

    from .baselines import Strategy


logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1
STATE_FILE = "state.json"
WEIGHTS_DIR = "weights"
LEGACY_KIND = "classification"  # checkpoints written before they named their kind hold classification edits
TEMP_PREFIX = ".tmp-"  # a checkpoint being written; one left behind by a killed run is removed on resume


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any], save_weights: Callable[[Path], Any]) -> Path:
    """Write a checkpoint into ``directory`` atomically, replacing the one there.

    Args:
        directory: The checkpoint directory (created if missing).
        state: JSON-ready settings and results; ``"format"`` is added.
        save_weights: Called with the folder the edited state goes to.

    Returns:
        The new checkpoint's folder, ``directory / "current"``.

    Raises:
        Whatever ``save_weights`` or the writes raise; the checkpoint already there is then left as it was.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=directory))
    try:
        save_weights(tmp / WEIGHTS_DIR)
        atomic_write_json(tmp / STATE_FILE, {**state, "format": CHECKPOINT_FORMAT})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    current, old = directory / "current", directory / ".old"
    if old.exists():
        shutil.rmtree(old)
    if current.exists():
        os.replace(current, old)
    os.replace(tmp, current)
    shutil.rmtree(old, ignore_errors=True)
    return current


def load_checkpoint(directory: str | os.PathLike, kind: str) -> tuple[dict[str, Any], Path] | None:
    """The state of the checkpoint in ``directory`` and the folder of its weights; ``None`` when there is none.

    A checkpoint interrupted between its two renames is completed first.

    Args:
        directory: The checkpoint directory.
        kind: The kind of edits the caller makes (``"classification"``, ``"generation"``).

    Raises:
        ValueError: If the checkpoint holds another kind of edits or has another format.
    """
    directory = Path(directory)
    current = directory / "current"
    if not (current / STATE_FILE).exists():
        if not (directory / ".old" / STATE_FILE).exists():
            return None
        os.replace(directory / ".old", current)  # interrupted between the two renames
    state = json.loads((current / STATE_FILE).read_text(encoding="utf-8"))
    found = state.get("kind", LEGACY_KIND)
    if found != kind or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint in {directory} is not a {kind}-edit checkpoint (it holds {found} edits, format "
            f"{state.get('format')!r}); use another checkpoint_dir."
        )
    return state, current / WEIGHTS_DIR


def _differences(saved: Any, current: Any, path: str = "") -> list[str]:
    """``"name: saved -> current"`` for each leaf where two JSON-like values differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            line
            for key in sorted(set(saved) | set(current), key=str)
            for line in _differences(saved.get(key), current.get(key), f"{path}.{key}" if path else str(key))
        ]
    return [] if saved == current else [f"{path or 'settings'}: {saved!r} -> {current!r}"]


class EditStream(ABC):
    """Mixin for editors: :meth:`edit_stream`, a resumable sequence of edits, each on top of the earlier ones.

    The editor provides ``method``, ``languages``, ``strategy``, ``model`` and ``progress``, and the methods
    :meth:`edit`, :meth:`is_correct`, :meth:`add_to_memory` and :meth:`_record`; ``edit_kind`` names its kind of
    edits and ``result_class`` its result dataclass (with ``id``, ``success``, ``skipped`` and ``method`` fields, and
    ``to_dict``). Records need an ``id`` and ``text(lang)``, the text that joins the memory after an edit.
    """

    edit_kind: ClassVar[str]
    result_class: ClassVar[type]
    method: str
    languages: list[str]
    strategy: Strategy
    model: nn.Module
    progress: bool

    @abstractmethod
    def edit(self, record: Any) -> Any:
        """Edit the model for one record; returns a ``result_class`` instance."""

    @abstractmethod
    def is_correct(self, record: Any) -> bool:
        """Whether the model already gets ``record`` right, so that :meth:`edit_stream` may skip it."""

    @abstractmethod
    def add_to_memory(self, texts: Sequence[str]) -> None:
        """Add texts that later patches must stay silent on."""

    def stream_settings(self) -> dict[str, Any]:
        """What shapes every edit besides method and languages: the editor's ``config`` (``to_dict``), a baseline's
        ``BaselineConfig`` and the adapters' ``sharpness``. A checkpoint is resumed only with the same settings
        (JSON-comparable values)."""
        settings: dict[str, Any] = {}
        config = getattr(self, "config", None)
        if hasattr(config, "to_dict"):
            settings["edit_config"] = config.to_dict()
        baseline = getattr(getattr(self, "strategy", None), "baseline", None)
        if hasattr(baseline, "to_dict"):
            settings["baseline"] = baseline.to_dict()
        peft_config = getattr(self.model, "peft_config", None)
        if isinstance(peft_config, dict):
            settings["sharpness"] = {name: getattr(c, "sharpness", None) for name, c in sorted(peft_config.items())}
        return json.loads(json.dumps(settings, sort_keys=True, default=str))

    @abstractmethod
    def _record(self, record: Any) -> Any:
        """The record, parsed from a dict if need be and checked to have every training language."""

    def edit_stream(
        self,
        records: Iterable[Any],
        *,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        skip_correct: bool = True,
    ) -> list[Any]:
        """Edit records in order, each on top of the earlier ones, with a progress bar.

        A record the model already gets right (:meth:`is_correct`) is skipped when ``skip_correct``. After each
        edit, the record's text in every training language joins the memory, so later patches stay silent on
        earlier edits. With ``checkpoint_dir``, the edited state and the results are saved atomically every
        ``checkpoint_every`` edits and at the end; calling again with the same records resumes after the last
        checkpoint without redoing or losing edits.

        Returns:
            One result per record, in order.

        Raises:
            ValueError: If a record is invalid, record ids repeat, ``checkpoint_every`` is not an int >= 1,
                ``checkpoint_dir`` is a file, is not writable, has less free space than one checkpoint needs, or
                holds a checkpoint of another kind, method, languages, :meth:`stream_settings` or stream of records.
            DirectoryLocked: Another live stream writes into ``checkpoint_dir`` (see `peft_mpn.utils.locks`).
        """
        if not is_int(checkpoint_every, least=1):
            raise ValueError(f"edit_stream: checkpoint_every must be an int >= 1 (edits), got {checkpoint_every!r}.")
        if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
            raise ValueError(f"edit_stream: checkpoint_dir {os.fspath(checkpoint_dir)!r} is a file; pass a directory.")
        records = [self._record(r) for r in records]
        ids = [r.id for r in records]
        if not ids:
            logger.warning("edit_stream got no records: nothing is edited and no checkpoint is written")
            return []
        if len(set(ids)) != len(ids):
            raise ValueError("edit_stream: record ids must be unique (field 'id' repeats).")
        directory = None if checkpoint_dir is None else Path(checkpoint_dir)
        with contextlib.ExitStack() as stack:
            if directory is not None:
                check_writable_dir(directory, self._checkpoint_bytes(), "checkpoint_dir")
                stack.enter_context(directory_lock(directory, f"{self.edit_kind} edit_stream"))
                removed = remove_orphans(directory, (f"{TEMP_PREFIX}*",))  # debris of a killed save
                if removed:
                    logger.info("removed %d unfinished checkpoint folder(s) in %s", len(removed), directory)
            return self._run_stream(records, ids, directory, checkpoint_every, skip_correct)

    def _checkpoint_bytes(self) -> int:
        """About the size of one checkpoint: that of the edited FFN block (FT-L saves it whole; patches are smaller
        until there are as many as the FFN has units), at least 1 MiB."""
        total = 0
        module = getattr(self.strategy, "key_module", None)
        if module is not None:
            total = 2 * sum(t.numel() * t.element_size() for t in module.state_dict().values())
        return max(MIB, total)

    def _run_stream(
        self, records: list[Any], ids: list[str], directory: Path | None, checkpoint_every: int, skip_correct: bool
    ) -> list[Any]:
        results = [] if directory is None else self._resume(directory, records)
        desc = f"editing ({self.method}, {self.edit_kind})"
        with tqdm(total=len(records), initial=len(results), desc=desc, disable=not self.progress) as bar:
            for index in range(len(results), len(records)):
                record = records[index]
                if skip_correct and self.is_correct(record):
                    results.append(self.result_class(id=record.id, success=True, skipped=True, method=self.method))
                else:
                    results.append(self.edit(record))
                    if not results[-1].skipped:
                        self.add_to_memory(self._memory_texts([record]))
                edited = [r for r in results if not r.skipped]
                bar.update(1)
                bar.set_postfix(edits=len(edited), success=f"{sum(r.success for r in edited)}/{len(edited)}")
                due = not results[-1].skipped and len(edited) % checkpoint_every == 0
                if directory is not None and (due or index == len(records) - 1):
                    self._checkpoint(directory, ids, results)
        return results

    def _memory_texts(self, records: Iterable[Any]) -> list[str]:
        """The texts of edited records that join the memory: each record in every training language."""
        return [record.text(lang) for record in records for lang in self.languages]

    def _checkpoint(self, directory: Path, ids: list[str], results: list[Any]) -> None:
        state = {
            "kind": self.edit_kind,
            "method": self.method,
            "languages": self.languages,
            "settings": self.stream_settings(),
            "ids": ids,
            "results": [r.to_dict() for r in results],
        }
        save_checkpoint(directory, state, self.strategy.save)

    def _resume(self, directory: Path, records: list[Any]) -> list[Any]:
        """Load the checkpoint in ``directory``, if any: the edited state, the memory, and the results so far."""
        loaded = load_checkpoint(directory, self.edit_kind)
        if loaded is None:
            return []
        state, weights = loaded
        if state.get("method") != self.method or state.get("languages") != self.languages:
            raise ValueError(
                f"checkpoint in {directory} is for method {state.get('method')!r} with languages "
                f"{state.get('languages')}; use another checkpoint_dir or the same settings."
            )
        saved, current = state.get("settings"), self.stream_settings()
        if saved is not None and saved != current:  # checkpoints written before settings were saved: not checked
            changed = _differences(saved, current)
            raise ValueError(
                f"checkpoint in {directory} was made with other settings ({'; '.join(changed)}); resuming would mix "
                "edits made two ways. Use the same settings, or another checkpoint_dir."
            )
        done = state["results"]
        if [r["id"] for r in done] != [r.id for r in records][: len(done)]:
            raise ValueError(
                f"checkpoint in {directory} was made for another stream of records (ids differ); use a new "
                "checkpoint_dir or the same records."
            )
        self.strategy.load(weights)
        self.model.eval()
        by_id = {r.id: r for r in records}
        self.add_to_memory(self._memory_texts(by_id[r["id"]] for r in done if not r["skipped"]))
        logger.info("resumed %d of %d %s edits from %s", len(done), len(records), self.edit_kind, directory)
        return [self.result_class(**r) for r in done]
