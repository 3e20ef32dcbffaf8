"""Loaders for the published multilingual zsRE editing sets: Bi-ZsRE and MzsRE (ReMaKE), from local files.

Neither set is on the Hugging Face Hub (both are shared as archives on Google Drive), and nothing here downloads:
give the path of the files you have. Both return :class:`CounterfactualEditRecord`, the record type of the
counterfactual benchmark, so the same editor and evaluation run on them.

**Bi-ZsRE** (Wang et al., 2023, "Cross-Lingual Knowledge Editing in Large Language Models",
https://github.com/krystalan/Bi_ZsRE) translates the zsRE editing set of Yao et al. (2023) into Chinese.
``bizsre_test.json`` is a JSON list; each item maps a language (``"en"``, ``"zh"``) to one zsRE entry::

    [{"en": {"subject": "...", "src": "Which family does Ramalinaceae belong to?", "rephrase": "...",
             "alt": "Lamiinae", "loc": "nq question: ...", "loc_ans": "...",
             "portability": {"New Question": "...", "New Answer": "..."}},
      "zh": {...the same fields in Chinese...}}]

Its training and dev files (``zsre_mend_train_10000.json`` and ``zsre_mend_train_10000_chinese.json``,
``zsre_mend_eval.json`` and ``zsre_mend_eval_chinese.json``) are the monolingual MEND/EasyEdit format, parallel by
position: a list of ``{"subject", "src", "pred", "rephrase", "alt", "answers", "loc", "loc_ans", "cond"}`` where
``pred``/``answers`` give the answer before the edit; :func:`load_zsre_parallel` joins them.

**MzsRE** (Wang et al., 2023, "Retrieval-augmented Multilingual Knowledge Editing", ReMaKE) extends it to 12
languages: one file per English pair, ``mzsre_test_duplicate_en{xx}.json`` with ``xx`` in ``cz de du es fr pt ru th
tr vi zh``, each item in the Bi-ZsRE test format with the keys ``"en"`` and ``xx``. ReMaKE's codes ``cz`` (Czech)
and ``du`` (Dutch) become the ISO codes ``cs`` and ``nl`` (``iso_codes=False`` keeps them; BMIKE-53 copies use
``zh-cn``, read as ``zh``). :func:`load_mzsre` reads one file or a folder of them and joins the pairs by position
(the English side must agree).

A zsRE entry becomes: ``prompt`` ``src`` (through ``prompt_template``), ``target`` ``alt`` (with a leading space
except in ``zh``, ``ja``, ``th``), ``rephrases`` ``rephrase``, ``locality`` the ``loc`` questions (without the
``"nq question: "`` prefix), one neighbour record with ``loc_ans`` as its target (``meta["kind"] == "locality"``),
``original`` ``pred`` (or ``answers[0]``) where every language has it, and ``meta["portability"]`` the portability
question and answer as ``{"prompt": {lang: ...}, "target": {lang: ...}}``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .counterfactual import CounterfactualEditRecord, answer_text
from .generation import GenerationEditRecord


#: The MzsRE languages besides English, as ReMaKE names them (``cz`` Czech, ``du`` Dutch).
MZSRE_LANGUAGES: tuple[str, ...] = ("cz", "de", "du", "es", "fr", "pt", "ru", "th", "tr", "vi", "zh")
#: Non-ISO language codes of the releases -> ISO 639-1.
ZSRE_ISO_CODES: dict[str, str] = {"cz": "cs", "du": "nl", "zh-cn": "zh"}
#: Fields of one zsRE entry that a loader needs.
ZSRE_REQUIRED: tuple[str, ...] = ("src", "alt")
#: Fields read when present.
ZSRE_OPTIONAL: tuple[str, ...] = ("subject", "rephrase", "loc", "loc_ans", "portability", "pred", "answers", "cond")
_NQ_PREFIX = re.compile(r"^\s*nq question:\s*", re.IGNORECASE)
_MZSRE_NAME = re.compile(r"^mzsre_test_duplicate_en([a-z-]+)\.json$")


def _fail(path: Path, where: str, problem: str) -> ValueError:
    return ValueError(f"{path}: {where}: {problem}")


def _read_list(path: str | os.PathLike) -> tuple[Path, list[Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file; give the path of a zsRE JSON file.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path}: a zsRE file must hold a JSON list of items, got {type(data).__name__}.")
    return path, data


def _text(path: Path, where: str, entry: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = entry.get(name)
    if value is None:
        if required:
            raise _fail(path, where, f"field {name!r} is missing (a zsRE entry needs {list(ZSRE_REQUIRED)}).")
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, where, f"field {name!r} must be a non-empty string, got {value!r:.60}.")
    return value.strip()


def _entry(path: Path, where: str, entry: Any) -> dict[str, Any]:
    """Validate one zsRE entry (one language of one item) and return its fields, stripped."""
    if not isinstance(entry, dict):
        raise _fail(path, where, f"a zsRE entry must be a JSON object with {list(ZSRE_REQUIRED)}.")
    out: dict[str, Any] = {}
    for name in ZSRE_REQUIRED + ("subject", "rephrase", "loc", "loc_ans", "pred"):
        out[name] = _text(path, where, entry, name, required=name in ZSRE_REQUIRED)
    if out["pred"] is None and entry.get("answers") is not None:
        answers = entry["answers"]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise _fail(path, where, "field 'answers' must be a list of strings.")
        out["pred"] = answers[0].strip() if answers and answers[0].strip() else None
    if (out["loc"] is None) != (out["loc_ans"] is None):
        raise _fail(path, where, "fields 'loc' and 'loc_ans' come together; one is missing.")
    portability = entry.get("portability")
    if portability is not None:
        if not isinstance(portability, dict):
            raise _fail(path, where, "field 'portability' must be an object with 'New Question' and 'New Answer'.")
        question, answer = portability.get("New Question"), portability.get("New Answer")
        if not (isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip()):
            raise _fail(path, where, "field 'portability' needs non-empty 'New Question' and 'New Answer' strings.")
        out["portability"] = (question.strip(), answer.strip())
    return out


def _language(code: str, iso_codes: bool) -> str:
    return ZSRE_ISO_CODES.get(code, code) if iso_codes else code


def _record(
    entries: Mapping[str, Mapping[str, Any]], record_id: str, source: str, prompt_template: str
) -> CounterfactualEditRecord:
    """One record from the validated entries of one item, per language (English first)."""
    langs = ["en"] + [lang for lang in entries if lang != "en"]

    def prompt(question: str) -> str:
        return prompt_template.format(question=question)

    locality, locality_langs = [], []
    for lang in langs:
        if entries[lang]["loc"]:
            locality.append(prompt(_NQ_PREFIX.sub("", entries[lang]["loc"])))
            locality_langs.append(lang)
    neighbours = []
    loc_langs = [lang for lang in langs if entries[lang]["loc"]]
    if "en" in loc_langs:
        neighbours.append(
            GenerationEditRecord(
                f"{record_id}-loc",
                {lang: prompt(_NQ_PREFIX.sub("", entries[lang]["loc"])) for lang in loc_langs},
                {lang: answer_text(entries[lang]["loc_ans"], lang) for lang in loc_langs},
                meta={"kind": "locality"},
            )
        )
    meta: dict[str, Any] = {"source": source, "locality_languages": locality_langs}
    subjects = {lang: entries[lang]["subject"] for lang in langs if entries[lang]["subject"]}
    if subjects:
        meta["subject"] = subjects
    port_langs = [lang for lang in langs if entries[lang].get("portability")]
    if port_langs:
        meta["portability"] = {
            "prompt": {lang: prompt(entries[lang]["portability"][0]) for lang in port_langs},
            "target": {lang: answer_text(entries[lang]["portability"][1], lang) for lang in port_langs},
        }
    original = {}
    if all(entries[lang]["pred"] for lang in langs):
        original = {lang: answer_text(entries[lang]["pred"], lang) for lang in langs}
    return CounterfactualEditRecord(
        id=record_id,
        prompt={lang: prompt(entries[lang]["src"]) for lang in langs},
        target={lang: answer_text(entries[lang]["alt"], lang) for lang in langs},
        rephrases={lang: [prompt(entries[lang]["rephrase"])] for lang in langs if entries[lang]["rephrase"]},
        locality=locality,
        meta=meta,
        original=original,
        neighbours=neighbours,
    )


def _check_template(prompt_template: str) -> None:
    try:
        prompt_template.format(question="q")
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"prompt_template {prompt_template!r} must use only the field {{question}}, e.g. "
            "'Question: {question}\\nAnswer:'."
        ) from exc


def _multilingual_items(
    path: Path, data: list[Any], iso_codes: bool, languages: Sequence[str] | None
) -> list[dict[str, dict[str, Any]]]:
    """Validate a language-keyed file (Bi-ZsRE test, MzsRE) into ``[{lang: entry}]``."""
    items = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not item:
            raise _fail(path, f"item {index}", "must be an object mapping language codes to zsRE entries.")
        if "en" not in item:
            raise _fail(path, f"item {index}", f"has no English ('en') entry (languages: {sorted(item)}).")
        entries = {}
        for code, entry in item.items():
            lang = _language(code, iso_codes)
            if languages is None or lang in languages or lang == "en":
                entries[lang] = _entry(path, f"item {index}, language {code!r}", entry)
        items.append(entries)
    return items


def load_bizsre(
    path: str | os.PathLike,
    *,
    prompt_template: str = "{question}",
    limit: int | None = None,
) -> list[CounterfactualEditRecord]:
    """Read the Bi-ZsRE test set (``bizsre_test.json``): English and Chinese, one record per item.

    Args:
        path: The JSON file.
        prompt_template: Turns a question into a prompt; ``{question}`` is replaced (e.g.
            ``"Question: {question}\\nAnswer:"`` for a base model).
        limit: Read only the first ``limit`` items.

    Returns:
        Records with ids ``bizsre-<index>``.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: Naming the file, the item, the language and the field: bad JSON, not a list, an item without
            English, a missing ``src``/``alt``, a non-string field, ``loc`` without ``loc_ans``, a bad
            ``portability``.
    """
    _check_template(prompt_template)
    path, data = _read_list(path)
    items = _multilingual_items(path, data[:limit] if limit is not None else data, True, None)
    return [_record(entries, f"bizsre-{i}", "bizsre", prompt_template) for i, entries in enumerate(items)]


def load_zsre_parallel(
    paths: Mapping[str, str | os.PathLike],
    *,
    prompt_template: str = "{question}",
    limit: int | None = None,
    source: str = "zsre",
) -> list[CounterfactualEditRecord]:
    """Join monolingual MEND-format zsRE files that are parallel by position (Bi-ZsRE's train and dev files).

    Args:
        paths: Language -> file, English included, e.g. ``{"en": "zsre_mend_eval.json", "zh":
            "zsre_mend_eval_chinese.json"}``.
        prompt_template: As in :func:`load_bizsre`.
        limit: Read only the first ``limit`` items.
        source: The id prefix and ``meta["source"]``.

    Returns:
        Records with ids ``<source>-<index>``; ``original`` holds ``pred`` (or ``answers[0]``) when every
        language has one.

    Raises:
        ValueError: If English is missing, the files differ in length, or an entry is malformed (naming the file,
            the item and the field).
    """
    _check_template(prompt_template)
    if "en" not in paths:
        raise ValueError(f"load_zsre_parallel needs an English ('en') file among {sorted(paths)}.")
    columns: dict[str, list[dict[str, Any]]] = {}
    for lang, file in paths.items():
        path, data = _read_list(file)
        data = data[:limit] if limit is not None else data
        columns[lang] = [_entry(path, f"item {i}", entry) for i, entry in enumerate(data)]
    lengths = {lang: len(rows) for lang, rows in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"parallel zsRE files must have as many items each, got {lengths}.")
    return [
        _record({lang: rows[i] for lang, rows in columns.items()}, f"{source}-{i}", source, prompt_template)
        for i in range(lengths["en"])
    ]


def mzsre_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The MzsRE files in a folder: language code (as in the file name) -> path."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.iterdir()):
        match = _MZSRE_NAME.match(path.name)
        if match:
            found[match.group(1)] = path
    return found


def load_mzsre(
    path: str | os.PathLike,
    *,
    languages: Iterable[str] | None = None,
    prompt_template: str = "{question}",
    limit: int | None = None,
    iso_codes: bool = True,
) -> list[CounterfactualEditRecord]:
    """Read MzsRE (ReMaKE): one ``mzsre_test_duplicate_en{xx}.json`` file, or a folder of them joined by position.

    Args:
        path: One file, or a folder holding ``mzsre_test_duplicate_en*.json`` files.
        languages: Keep only these languages besides English (ISO codes if ``iso_codes``); None keeps all.
        prompt_template: As in :func:`load_bizsre`.
        limit: Read only the first ``limit`` items.
        iso_codes: Rename ReMaKE's ``cz``/``du`` (and ``zh-cn``) to ``cs``/``nl`` (``zh``).

    Returns:
        Records with ids ``mzsre-<index>``, one per item, with English and every kept language.

    Raises:
        FileNotFoundError: If ``path`` does not exist or a folder holds no MzsRE file.
        ValueError: For a malformed file (naming the file, the item, the language and the field), files of
            different lengths, or items whose English question differs between files (not the same release).
    """
    _check_template(prompt_template)
    path = Path(path)
    if path.is_dir():
        files = list(mzsre_files(path).values())
        if not files:
            raise FileNotFoundError(f"{path} holds no mzsre_test_duplicate_en<lang>.json file.")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path} is neither an MzsRE file nor a folder of them.")
    wanted = None if languages is None else [_language(code, iso_codes) for code in languages]
    merged: list[dict[str, dict[str, Any]]] | None = None
    first: Path | None = None
    for file in files:
        file, data = _read_list(file)
        items = _multilingual_items(file, data[:limit] if limit is not None else data, iso_codes, wanted)
        if merged is None:
            merged, first = items, file
            continue
        if len(items) != len(merged):
            raise ValueError(f"{file} has {len(items)} items but {first} has {len(merged)}; MzsRE pairs align.")
        for index, (into, extra) in enumerate(zip(merged, items)):
            if extra["en"]["src"] != into["en"]["src"]:
                raise _fail(
                    file,
                    f"item {index}",
                    f"English 'src' {extra['en']['src']!r} differs from {first.name}'s {into['en']['src']!r}: "
                    "the files are not parallel.",
                )
            into.update({lang: entry for lang, entry in extra.items() if lang != "en"})
    assert merged is not None
    return [_record(entries, f"mzsre-{i}", "mzsre", prompt_template) for i, entries in enumerate(merged)]


__all__ = [
    "MZSRE_LANGUAGES",
    "ZSRE_ISO_CODES",
    "load_bizsre",
    "load_mzsre",
    "load_zsre_parallel",
    "mzsre_files",
]
