"""A stream of sequential edits: throughput, memory, adapter size, and whether edits and locality hold at the end.

``MPNEditor.edit_stream`` edits ``--edits`` records in order, each on top of the earlier ones (after each edit its
inputs join the memory, as the editor does). Every record is edited, also one that earlier edits already flipped
(``--skip-correct`` skips those, as ``edit_stream`` does by default). Every record is one the base classifier gets
wrong. Reported:

- throughput: edits per second and seconds per edit, overall and per block of ``--block`` edits (how the cost of
  an edit grows with the number of earlier patches and the memory that grows with them);
- peak resident memory (RSS) of the process;
- the saved adapter's size per patch (``adapter_model.safetensors``);
- at the end: edit retention (ER, the share of edited records still predicted as their label) and locality (the
  share of unrelated texts, never edited and not in the memory, whose prediction did not change).

    python benchmarks/stream.py                          # e5-small + head, 1,000 T-Patcher edits (~5 min)
    python benchmarks/stream.py --model tiny --edits 20 --memory 50 --locality 20
    python benchmarks/stream.py --plot docs/img/perf-stream.png
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from peft import get_peft_model

from peft_mpn import EditConfig, EditRecord, MPNConfig, MPNEditor


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.model == "tiny":
        setup = _common.tiny_setup(args.edits, args.memory, n_locality=args.locality)
    else:
        setup = _common.default_setup(
            args.edits,
            args.memory,
            languages=args.languages,
            n_locality=args.locality,
            edit_relations=("capital", "continent", "currency"),
            memory_relations=("language",),
        )
    model = get_peft_model(copy.deepcopy(setup.model), MPNConfig(task_type="SEQ_CLS"))
    config = EditConfig(max_steps=args.max_steps)
    editor = MPNEditor(model, setup.tokenizer, args.languages, setup.memory_pool, progress=False, config=config)
    records = [EditRecord.from_dict(r) for r in setup.records]

    start = time.perf_counter()
    locality_before = editor.predict(setup.locality) if setup.locality else []
    editor.cache_memory()
    prepare_seconds = time.perf_counter() - start

    start = time.perf_counter()
    results = editor.edit_stream(records, skip_correct=args.skip_correct)
    stream_seconds = time.perf_counter() - start

    edited = [(record, result) for record, result in zip(records, results) if not result.skipped]
    start = time.perf_counter()
    final = editor.predict([record.inputs["en"] for record, _ in edited]) if edited else []
    locality_after = editor.predict(setup.locality) if setup.locality else []
    evaluate_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        adapter_bytes = (Path(tmp) / "adapter_model.safetensors").stat().st_size
    patches = model.num_patches()

    blocks = []
    for first in range(0, len(results), args.block):
        chunk = [r for r in results[first : first + args.block] if not r.skipped]
        if chunk:
            blocks.append(
                {
                    "first_edit": first,
                    "edits": len(chunk),
                    "median_s": statistics.median(r.seconds for r in chunk),
                    "mean_s": statistics.fmean(r.seconds for r in chunk),
                    "mean_steps": statistics.fmean(r.steps for r in chunk),
                }
            )
    seconds = [r.seconds for _, r in edited]
    retained = sum(p == record.label for p, (record, _) in zip(final, edited))
    unchanged = sum(a == b for a, b in zip(locality_before, locality_after))
    out: dict[str, Any] = {
        "benchmark": "stream",
        "model": args.model,
        "description": setup.description,
        "languages": args.languages,
        "records": len(records),
        "edited": len(edited),
        "skipped_already_correct": len(records) - len(edited),
        "initial_memory_texts": len(setup.memory_pool),
        "final_memory_texts": editor.memory_size,
        "machine": _common.machine(),
        "throughput": {
            "stream_s": round(stream_seconds, 2),
            "records_per_s": len(records) / stream_seconds,
            "edits_per_s": len(edited) / stream_seconds,
            **({k: round(v, 4) for k, v in _common.summary(seconds).items()} if seconds else {}),
            "mean_steps": statistics.fmean(r.steps for _, r in edited) if edited else 0.0,
        },
        "prepare_s": round(prepare_seconds, 2),
        "evaluate_s": round(evaluate_seconds, 2),
        "peak_rss_mb": round(_common.peak_rss_mb(), 1),
        "patches": patches,
        "adapter_bytes": adapter_bytes,
        "adapter_bytes_per_patch": adapter_bytes / max(patches, 1),
        "success_rate": sum(r.success for _, r in edited) / max(len(edited), 1),
        "edit_retention": retained / max(len(edited), 1),
        "locality": unchanged / max(len(setup.locality), 1) if setup.locality else None,
        "locality_texts": len(setup.locality),
        "blocks": blocks,
    }
    if args.plot:
        plot(out, Path(args.plot))
        out["plot"] = args.plot
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Seconds per edit against the number of earlier edits (block medians), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = report["blocks"]
    xs = [b["first_edit"] + b["edits"] / 2 for b in blocks]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(xs, [b["median_s"] * 1e3 for b in blocks], marker="o", label="median")
    ax.plot(xs, [b["mean_s"] * 1e3 for b in blocks], marker=".", linestyle="--", label="mean")
    ax.set_xlabel("earlier edits (patches in the adapter)")
    ax.set_ylabel("ms per edit")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{report['edited']} sequential edits, {report['machine']['cores']} CPU cores", fontsize=10)
    ax.grid(alpha=0.3)
    steps = ax.twinx()
    steps.plot(xs, [b["mean_steps"] for b in blocks], color="grey", marker=".", linestyle=":", label="mean steps")
    steps.set_ylabel("steps per edit (grey)")
    steps.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "default"], default="default")
    parser.add_argument("--edits", type=_common.positive_int, default=1000, help="records in the stream")
    parser.add_argument("--memory", type=_common.positive_int, default=1000, help="initial memory texts")
    parser.add_argument("--locality", type=_common.non_negative_int, default=500, help="unrelated texts checked")
    parser.add_argument("--languages", type=_common.language_list, default=["en"], help="training languages")
    parser.add_argument("--max-steps", type=_common.positive_int, default=EditConfig().max_steps)
    parser.add_argument("--block", type=_common.positive_int, default=100, help="edits per throughput block")
    parser.add_argument("--plot", default=None, help="write a PNG of seconds per edit against earlier edits")
    parser.add_argument(
        "--skip-correct",
        action="store_true",
        help="skip records the model already gets right when their turn comes (default: edit every record)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
