"""Every ```python block in README.md and docs/*.md runs as written, offline.

The blocks of one page run in order in one namespace (a reader follows a page top to bottom), in a fresh working
directory. A block may be preceded by one marker line, which this test understands and counts:

- ``<!-- docs-test: requires MODULE (why) -->``: runs when ``MODULE`` is installed (an optional extra); otherwise the
  test is skipped with the reason, never silently.
- ``<!-- docs-test: skip REASON -->``: never runs (e.g. it needs a Hub account); the reason is required, and
  :data:`SKIPPED` must list the block, so a new skip is a deliberate change to this file.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|requires)\s+(.*?)\s*-->\s*$")
#: (page, start of the first line of the block) of every block marked ``skip``.
SKIPPED = {("quickstart.md", "model.push_to_hub(")}


def blocks(page: Path) -> list[tuple[str, str | None, str | None, int]]:
    """``(code, marker kind, marker text, line)`` of each python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    out = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(before)
        line = text[: match.start()].count("\n") + 2
        out.append((match.group(1), *(marker.groups() if marker else (None, None)), line))
    return out


def test_the_pages_have_python_blocks_and_the_markers_are_well_formed():
    total = 0
    for page in PAGES:
        for code, kind, reason, line in blocks(page):
            total += 1
            if kind == "skip":
                assert len(reason) > 10, f"{page.name}:{line}: a skipped block needs a reason"
                first = code.splitlines()[0]
                listed = any(page.name == name and first.startswith(start) for name, start in SKIPPED)
                assert listed, f"{page.name}:{line}: list the skipped block in SKIPPED"
            if kind == "requires":
                assert re.match(r"^[A-Za-z_][\w.]*\s+\(.+\)$", reason), f"{page.name}:{line}: 'requires MODULE (why)'"
        text = page.read_text(encoding="utf-8")
        assert text.count("```python") == len(blocks(page)), f"{page.name}: an unclosed ```python block"
    assert total >= 8


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_page_runs_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    missing = []
    for code, kind, reason, line in blocks(page):
        if kind == "skip":
            continue
        if kind == "requires":
            module = reason.split()[0]
            if importlib.util.find_spec(module) is None:
                missing.append(f"{page.name}:{line} needs {reason}")
                continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102 (the documented code)
        except Exception as error:  # name the page and line of the block that failed
            raise AssertionError(f"{page.name}, block at line {line} failed: {error!r}") from error
    if missing:
        pytest.skip("; ".join(missing))
    assert os.getcwd() == str(tmp_path)
