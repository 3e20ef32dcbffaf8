"""Loaders for XNLI and XFEVER, from the Hugging Face Hub or from a local folder of JSONL files.

Both return a ``datasets.DatasetDict`` keyed by language (not by split): one split, many parallel languages.

Local layout, for both: ``<root>/<lang>/<split>.jsonl``, one example per line, in the schema below. ``validation``
and ``dev`` are aliases of each other, so XFEVER's release (``en/dev.jsonl``) and the Hub split name both work.
Local files are read directly (no ``datasets`` cache is written); Hub names go through ``datasets.load_dataset``.

XNLI (``facebook/xnli``): one config per language (``ar``, ``bg``, ... ``zh``), splits ``train`` / ``validation`` /
``test``, fields ``premise``, ``hypothesis``, ``label`` (0 entailment, 1 neutral, 2 contradiction). Local labels may
be those ids or their names.

XFEVER (Chang, Kruengkrai and Yamagishi, 2023; https://github.com/nii-yamagishilab/xfever): FEVER claims and evidence
translated into ``en es fr id ja zh``. The release is not on the Hub but on GitHub/Zenodo, one folder per language
with ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl``; each line has ``id``, ``claim``, ``evidence`` (a string),
optionally ``page``, and ``label`` as ``"SUPPORTS"``, ``"REFUTES"`` or ``"NOT ENOUGH INFO"`` (the reference code only
reads its first letter, so ``"S"``/``"R"``/``"N"`` are accepted too). Assumption for a Hub copy: one config per
language with the same fields (an integer ``label`` is decoded through the dataset's ``ClassLabel`` names). Labels are
returned as ``REFUTES`` = 0, ``SUPPORTS`` = 1 (the convention of :mod:`peft_mpn.data.benchmark`) and
``NOT ENOUGH INFO`` = 2; by default NOT ENOUGH INFO examples are dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.io import read_jsonl


if TYPE_CHECKING:
    import datasets


XNLI_HUB_NAME = "facebook/xnli"
XNLI_LABEL_NAMES: tuple[str, str, str] = ("entailment", "neutral", "contradiction")
#: The XFEVER languages.
XFEVER_LANGUAGES: tuple[str, ...] = ("en", "es", "fr", "id", "ja", "zh")
#: XFEVER label names by returned id (REFUTES = 0 and SUPPORTS = 1 as in the country-facts benchmark).
XFEVER_LABEL_NAMES: tuple[str, str, str] = ("REFUTES", "SUPPORTS", "NOT ENOUGH INFO")
_XFEVER_BY_LETTER = {"R": 0, "S": 1, "N": 2}
_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {"validation": ("validation", "dev"), "dev": ("dev", "validation")}


def _is_local(path_or_name: str | os.PathLike[str]) -> bool:
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return True
    if path.exists() or str(path_or_name).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{path_or_name!s} is not a folder of <lang>/<split>.jsonl files")
    return False


def _local_file(root: Path, lang: str, split: str) -> Path:
    for name in _SPLIT_ALIASES.get(split, (split,)):
        candidate = root / lang / f"{name}.jsonl"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {root / lang / (split + '.jsonl')} (nor an alias of split {split!r})")


def _languages(languages: str | Sequence[str]) -> list[str]:
    return [languages] if isinstance(languages, str) else list(dict.fromkeys(languages))


def _xnli_label(value: Any) -> int:
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        return XNLI_LABEL_NAMES.index(value.strip().lower())
    return int(value)


def load_xnli(
    path_or_name: str | os.PathLike[str] = XNLI_HUB_NAME,
    languages: str | Sequence[str] = ("en",),
    split: str = "test",
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """Load XNLI for some languages.

    Args:
        path_or_name: A Hub dataset name (default ``facebook/xnli``, one config per language) or a local folder with
            ``<lang>/<split>.jsonl`` files of ``{"premise", "hypothesis", "label"}``.
        languages: One language code or several.
        split: ``train``, ``validation`` (alias ``dev`` for local folders) or ``test``.
        **load_kwargs: Passed to ``datasets.load_dataset`` for Hub names (``cache_dir``, ``revision``, ...).

    Returns:
        ``DatasetDict`` ``{lang: Dataset}`` with columns ``premise``, ``hypothesis``, ``label``
        (``ClassLabel(["entailment", "neutral", "contradiction"])``).

    Raises:
        FileNotFoundError: For a local folder without the requested files.
        ValueError: For a local label that is not an XNLI label.
    """
    import datasets

    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(XNLI_LABEL_NAMES)),
        }
    )
    out = {}
    local = _is_local(path_or_name)
    for lang in _languages(languages):
        if local:
            rows = read_jsonl(_local_file(Path(path_or_name).expanduser(), lang, split))
            try:
                labels = [_xnli_label(row["label"]) for row in rows]
            except (KeyError, ValueError) as exc:
                raise ValueError(f"bad XNLI label in {lang}/{split}: {exc}") from exc
            if any(not 0 <= label < 3 for label in labels):
                raise ValueError(f"XNLI labels must be 0..2 in {lang}/{split}")
            columns = {
                "premise": [str(row["premise"]) for row in rows],
                "hypothesis": [str(row["hypothesis"]) for row in rows],
                "label": labels,
            }
            out[lang] = datasets.Dataset.from_dict(columns, features=features)
        else:
            ds = datasets.load_dataset(str(path_or_name), lang, split=split, **load_kwargs)
            out[lang] = ds.select_columns(["premise", "hypothesis", "label"])
    return datasets.DatasetDict(out)


def _xfever_label(value: Any, names: Sequence[str] | None) -> int:
    if not isinstance(value, str):
        if names is None:
            raise ValueError(f"integer XFEVER label {value!r} without ClassLabel names to decode it")
        value = names[int(value)]
    letter = value.strip()[:1].upper()
    if letter not in _XFEVER_BY_LETTER:
        raise ValueError(f"unknown XFEVER label {value!r}")
    return _XFEVER_BY_LETTER[letter]


def _xfever_columns(rows: Sequence[Mapping[str, Any]], names: Sequence[str] | None, binary: bool) -> dict[str, list]:
    columns: dict[str, list] = {"id": [], "claim": [], "evidence": [], "label": []}
    for i, row in enumerate(rows):
        label = _xfever_label(row["label"], names)
        if binary and label == 2:
            continue
        evidence = row.get("evidence")
        columns["id"].append(str(row.get("id", i)))
        columns["claim"].append(str(row["claim"]))
        columns["evidence"].append(evidence if isinstance(evidence, str) else "")
        columns["label"].append(label)
    return columns


def load_xfever(
    path_or_name: str | os.PathLike[str],
    languages: str | Sequence[str] = XFEVER_LANGUAGES,
    split: str = "test",
    binary: bool = True,
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """Load XFEVER claims for some languages.

    Args:
        path_or_name: A local folder in the XFEVER release layout (``<lang>/{train,dev,test}.jsonl``) or a Hub
            dataset name with one config per language (assumed; XFEVER itself is distributed on GitHub/Zenodo).
        languages: One language code or several (XFEVER has ``en es fr id ja zh``).
        split: ``train``, ``dev``/``validation`` or ``test``.
        binary: Drop NOT ENOUGH INFO examples, keeping SUPPORTS (1) and REFUTES (0) only.
        **load_kwargs: Passed to ``datasets.load_dataset`` for Hub names.

    Returns:
        ``DatasetDict`` ``{lang: Dataset}`` with columns ``id`` (string), ``claim``, ``evidence`` (``""`` when absent
        or not a string) and ``label`` (``ClassLabel(["REFUTES", "SUPPORTS", "NOT ENOUGH INFO"])``).

    Raises:
        FileNotFoundError: For a local folder without the requested files.
        ValueError: For a label that is not an XFEVER label.
    """
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "claim": datasets.Value("string"),
            "evidence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(XFEVER_LABEL_NAMES)),
        }
    )
    out = {}
    local = _is_local(path_or_name)
    for lang in _languages(languages):
        if local:
            rows = read_jsonl(_local_file(Path(path_or_name).expanduser(), lang, split))
            names = None
        else:
            ds = datasets.load_dataset(str(path_or_name), lang, split=split, **load_kwargs)
            feature = ds.features.get("label")
            names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
            rows = ds.to_list()
        out[lang] = datasets.Dataset.from_dict(_xfever_columns(rows, names, binary), features=features)
    return datasets.DatasetDict(out)
