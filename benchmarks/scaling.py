"""How the cost of a fast-path edit grows with the memory size and with the number of earlier patches.

Two curves, printed as JSON and optionally drawn (``--plot``):

- **memory**: one editor whose memory grows through ``--memory-sizes`` (texts added with ``add_to_memory``);
  at each size ``--edits`` edits are timed, each rolled back afterwards so that every size starts from the base
  model. Seconds per edit and steps per edit; ``step_s`` and ``fixed_s`` split an edit into a cost per training
  step and a fixed cost (encoding the record, adding and freezing the patch), measured with the stop rule off
  (edits of exactly 5 and 45 steps, median over 3 records).
- **patches**: an editor with ``--patch-memory`` memory texts and ``--patch-counts`` consolidated earlier patches
  (random keys with a negative bias: silent on most inputs, like real patches); ``--edits`` edits timed at each
  count. Patches are added between counts, never removed.

    python benchmarks/scaling.py --plot docs/img/perf-scaling.png          # e5-small (~5 min)
    python benchmarks/scaling.py --model tiny --memory-sizes 20,40 --patch-counts 0,10 --edits 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import _common
import torch
from peft import get_peft_model

from peft_mpn import EditConfig, EditRecord, MPNConfig, MPNEditor


def time_edits(editor: MPNEditor, records: list[EditRecord], roll_back: bool) -> dict[str, Any]:
    """Edit each record; seconds, steps and success (rolling each patch back when asked)."""
    seconds, steps, success = [], [], []
    for record in records:
        start = time.perf_counter()
        result = editor.edit(record)
        seconds.append(time.perf_counter() - start)
        steps.append(result.steps)
        success.append(result.success)
        if roll_back:
            editor.model.unfreeze_patches()
            editor.model.pop_patch()
            editor.model.freeze_patches()
    return {
        "median_s": statistics.median(seconds),
        "mean_s": statistics.fmean(seconds),
        "mean_steps": statistics.fmean(steps),
        "success_rate": sum(success) / len(success),
    }


def step_cost(editor: MPNEditor, records: list[EditRecord], roll_back: bool, short: int = 5, long: int = 45) -> dict:
    """Seconds per training step and fixed seconds per edit, from edits forced to run ``short`` and ``long`` steps.

    The stop rule is switched off for these edits (``memory_plateau`` with a patience beyond ``long``), so each runs
    exactly ``max_steps`` steps; the difference between the two lengths is the cost of ``long - short`` steps.
    """
    config = editor.config
    saved = (config.max_steps, config.stop_rule, config.patience)
    per_step, fixed = [], []
    try:
        config.stop_rule, config.patience = "memory_plateau", long + 1
        for record in records:
            timings = []
            for steps in (short, long):
                config.max_steps = steps
                start = time.perf_counter()
                editor.edit(record)
                timings.append(time.perf_counter() - start)
                if roll_back:
                    editor.model.unfreeze_patches()
                    editor.model.pop_patch()
                    editor.model.freeze_patches()
            per_step.append((timings[1] - timings[0]) / (long - short))
            fixed.append(timings[0] - short * per_step[-1])
    finally:
        config.max_steps, config.stop_rule, config.patience = saved
    return {"step_s": statistics.median(per_step), "fixed_s": statistics.median(fixed)}


def line(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares ``y = intercept + slope * x`` (slope 0 when the ``xs`` are all equal)."""
    if len(set(xs)) < 2:
        return {"intercept": statistics.fmean(ys) if ys else 0.0, "slope": 0.0}
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return {"intercept": mean_y - slope * mean_x, "slope": slope}


def add_silent_patches(model: Any, count: int, seed: int) -> None:
    """``count`` one-neuron patches with random keys and bias -3 (silent on most inputs), then consolidated."""
    parts = next(iter(model.patch_blocks().values()))
    d_in, d_out = parts["key"].in_features, parts["value"].out_features
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(count, d_in, generator=generator) / d_in**0.5
    values = torch.randn(count, d_out, generator=generator) * 0.01
    for i in range(count):
        model.add_patch(key=keys[i], bias=-3.0, value=values[i])
    model.freeze_patches()


def run(args: argparse.Namespace) -> dict[str, Any]:
    largest = max(max(args.memory_sizes), args.patch_memory)
    n_records = args.edits * (len(args.memory_sizes) + len(args.patch_counts))
    if args.model == "tiny":
        setup = _common.tiny_setup(n_records, largest)
    else:
        setup = _common.default_setup(n_records, largest)
    config = EditConfig(max_steps=args.max_steps)
    records = [EditRecord.from_dict(r) for r in setup.records]
    batches = [records[i * args.edits : (i + 1) * args.edits] for i in range(len(records) // args.edits)]

    sizes = sorted(args.memory_sizes)
    model = get_peft_model(copy.deepcopy(setup.model), MPNConfig(task_type="SEQ_CLS"))
    editor = MPNEditor(model, setup.tokenizer, ["en"], setup.memory_pool[: sizes[0]], progress=False, config=config)
    memory_points = []
    for index, size in enumerate(sizes):
        editor.add_to_memory(setup.memory_pool[editor.memory_size : size])
        start = time.perf_counter()
        editor.cache_memory()
        cached = time.perf_counter() - start
        point = time_edits(editor, batches[index], True)
        memory_points.append(
            {"memory_texts": size, "cache_s": round(cached, 2), **point, **step_cost(editor, batches[index][:3], True)}
        )

    model = get_peft_model(copy.deepcopy(setup.model), MPNConfig(task_type="SEQ_CLS"))
    memory = setup.memory_pool[: args.patch_memory]
    editor = MPNEditor(model, setup.tokenizer, ["en"], memory, progress=False, config=config)
    editor.cache_memory()
    patch_points, have = [], 0
    for index, count in enumerate(sorted(args.patch_counts)):
        start = time.perf_counter()
        add_silent_patches(model, max(count - model.num_patches(), 0), seed=index)
        build = time.perf_counter() - start
        have = model.num_patches()
        point = time_edits(editor, batches[len(sizes) + index], False)
        point.update(step_cost(editor, batches[len(sizes) + index][:3], False))
        patch_points.append({"earlier_patches": have, "build_s": round(build, 2), **point})

    out: dict[str, Any] = {
        "benchmark": "scaling",
        "model": args.model,
        "description": setup.description,
        "edits_per_point": args.edits,
        "machine": _common.machine(),
        "memory": memory_points,
        "memory_fit_step_s": line([p["memory_texts"] for p in memory_points], [p["step_s"] for p in memory_points]),
        "memory_fit_s_per_edit": line(
            [p["memory_texts"] for p in memory_points], [p["mean_s"] for p in memory_points]
        ),
        "patch_memory_texts": args.patch_memory,
        "patches": patch_points,
        "patches_fit_s_per_edit": line(
            [p["earlier_patches"] for p in patch_points], [p["mean_s"] for p in patch_points]
        ),
        "patches_fit_step_s": line([p["earlier_patches"] for p in patch_points], [p["step_s"] for p in patch_points]),
        "peak_rss_mb": round(_common.peak_rss_mb(), 1),
    }
    if args.plot:
        plot(out, Path(args.plot))
        out["plot"] = args.plot
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Two panels: ms per edit (and per step) against memory size, and against earlier patches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    panels = (
        (left, report["memory"], "memory_texts", "memory texts", "edit cost against memory size"),
        (right, report["patches"], "earlier_patches", "earlier patches", "edit cost against earlier patches"),
    )
    for ax, points, key, label, title in panels:
        xs = [p[key] for p in points]
        ax.plot(xs, [p["median_s"] * 1e3 for p in points], marker="o", label="ms per edit (median)")
        ax.plot(xs, [p["step_s"] * 1e3 * 10 for p in points], marker="s", linestyle="--", label="ms per 10 steps")
        ax.plot(xs, [p["fixed_s"] * 1e3 for p in points], marker="^", linestyle="-.", label="ms fixed per edit")
        ax.set_xlabel(label)
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        steps = ax.twinx()
        steps.plot(xs, [p["mean_steps"] for p in points], color="grey", marker=".", linestyle=":", label="steps")
        steps.set_ylabel("steps per edit (grey)")
        steps.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
    if report["patches"] and max(p["earlier_patches"] for p in report["patches"]) >= 100:
        right.set_xscale("symlog", linthresh=10)
        right.set_xlim(left=0)
    fig.suptitle(
        f"{report['description'].split(';')[0]}\n{report['machine']['cpu']}, {report['machine']['cores']} cores",
        fontsize=8,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "default"], default="default")
    parser.add_argument("--memory-sizes", type=_common.int_list, default=[500, 1000, 2000, 5000, 10000])
    parser.add_argument("--patch-counts", type=_common.int_list, default=[0, 100, 1000, 10000])
    parser.add_argument("--patch-memory", type=_common.positive_int, default=1000, help="memory of the patch curve")
    parser.add_argument("--edits", type=_common.positive_int, default=10, help="edits timed per point")
    parser.add_argument("--max-steps", type=_common.positive_int, default=EditConfig().max_steps)
    parser.add_argument("--plot", default=None, help="write the two curves as a PNG")
    args = parser.parse_args(argv)
    if min(args.memory_sizes) < 1:
        parser.error("--memory-sizes must be >= 1, e.g. 500,1000,2000.")
    return args


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
