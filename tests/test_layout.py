"""The package imports only downward: utils < data < tuner < editing < tasks < benchmark < the top-level faces.

The check reads every ``import`` of ``src/peft_mpn`` as text (module level and inside functions alike), so a lazy
import cannot hide an upward one. A task never imports another task.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest


SRC = Path(__file__).resolve().parents[1] / "src" / "peft_mpn"
LAYERS = {"utils": 0, "data": 1, "tuner": 2, "editing": 3, "tasks": 4, "benchmark": 5}
TOP = 9  # cli.py, models.py and the package root may import anything, and nothing below may import them


def rank(parts: tuple[str, ...]) -> int:
    """Layer of a module given by its parts under ``peft_mpn`` (the package root and top-level modules: ``TOP``)."""
    return LAYERS.get(parts[0], TOP) if parts else TOP


def task_of(parts: tuple[str, ...]) -> str | None:
    return parts[1] if len(parts) > 2 and parts[0] == "tasks" else None


def imports_of(path: Path, src: Path) -> list[tuple[int, tuple[str, ...]]]:
    """``(line, target parts under peft_mpn)`` of every peft_mpn import in ``path``."""
    package = path.relative_to(src).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = (*base, *(node.module.split(".") if node.module else ()))
            elif node.module and node.module.split(".")[0] == "peft_mpn":
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            if not target:  # ``from . import x`` or ``from peft_mpn import x``: the names are the modules
                for alias in node.names:
                    found.append((node.lineno, (*target, alias.name)))
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "peft_mpn":
                    found.append((node.lineno, tuple(alias.name.split(".")[1:])))
    return found


def upward_imports(src: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or rank(parts) == TOP:
            continue
        for line, target in imports_of(path, src):
            where = f"{path.relative_to(src)}:{line} imports peft_mpn.{'.'.join(target)}"
            if rank(target) > rank(parts):
                bad.append(where)
            elif task_of(parts) and task_of(target) and task_of(parts) != task_of(target):
                bad.append(where + " (a task imports another task)")
    return bad


def test_every_layer_exists():
    assert all((SRC / name).is_dir() for name in LAYERS)
    assert (SRC / "tasks" / "classification").is_dir() and (SRC / "tasks" / "generation").is_dir()


def test_imports_go_only_downward():
    assert upward_imports() == []


def test_tuner_keeps_peft_split():
    assert {p.name for p in (SRC / "tuner").glob("*.py")} >= {"config.py", "layer.py", "model.py"}


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("tuner/x.py", "from ..editing.losses import EditConfig\n", 1),
        ("tasks/generation/x.py", "from ..classification.editor import MPNEditor\n", 1),
        ("benchmark/x.py", "def f():\n    from .. import models\n", 1),
        ("editing/x.py", "import peft_mpn.cli\n", 1),
        ("editing/x.py", "from ..tuner.model import MPNModel\nfrom .losses import EditConfig\n", 0),
    ],
)
def test_the_check_catches_upward_imports(tmp_path: Path, where: str, source: str, expected: int):
    for name in LAYERS:
        (tmp_path / name).mkdir()
    file = tmp_path / where
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(source)
    assert len(upward_imports(tmp_path)) == expected
