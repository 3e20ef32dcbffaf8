"""Edit latency: the fast path (cached FFN inputs) against the full-model path, on the same edits.

Three measurements, printed as one JSON object:

1. **fast**: ``--edits`` edits on the fast path with a memory of ``--memory`` texts (seconds per edit: median,
   p90, mean; steps per edit; success rate). Caching the memory's FFN inputs happens once, before, and is
   reported apart (``memory_cache_s``).
2. **full**: the full-model path runs the whole model on the edit and every memory text at every step, so with
   10,000 memory texts one step takes minutes. Its cost per step is measured at ``--full-memory`` sizes (the
   difference between an edit capped at ``--full-steps`` steps and one capped at 1 step, so the set-up cancels
   out), fitted with a line and extrapolated to ``--memory``; its cost per edit is that times the fast path's mean
   steps (both paths take the same steps: see 3). The JSON says which figures are measured and which derived.
3. **check**: ``--check-edits`` complete edits on both paths with the same small memory (``--check-memory``):
   success and steps of each path, which must agree.

    python benchmarks/edit_latency.py                                 # e5-small, 10,000 memory texts (~10 min)
    python benchmarks/edit_latency.py --model tiny --edits 3 --memory 50 --full-memory 10,20 --check-edits 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

import _common
import torch
from peft import get_peft_model

from peft_mpn import EditConfig, EditRecord, MPNConfig, MPNEditor


def make_editor(base: torch.nn.Module, setup: _common.Setup, memory: list[str], fast: bool, args: Any) -> MPNEditor:
    """A T-Patcher/MPN editor on a fresh copy of the base classifier."""
    model = get_peft_model(copy.deepcopy(base), MPNConfig(task_type="SEQ_CLS"))
    config = EditConfig(max_steps=args.max_steps)
    return MPNEditor(model, setup.tokenizer, args.languages, memory, fast=fast, progress=False, config=config)


def measure_fast(base: torch.nn.Module, setup: _common.Setup, args: Any) -> dict[str, Any]:
    """``--edits`` fast-path edits with the full memory; each edit is kept (patches accumulate, as in use)."""
    editor = make_editor(base, setup, setup.memory_pool, True, args)
    start = time.perf_counter()
    editor.cache_memory()
    cache_seconds = time.perf_counter() - start
    warm = EditRecord.from_dict(setup.records[0])  # first-call costs (allocations, fused weights) out of the way
    editor.edit(warm)
    editor.model.unfreeze_patches()
    editor.model.pop_patch()
    editor.model.freeze_patches()
    seconds, steps, success = [], [], []
    for data in setup.records[1 : args.edits + 1]:
        record = EditRecord.from_dict(data)
        start = time.perf_counter()
        result = editor.edit(record)
        seconds.append(time.perf_counter() - start)
        steps.append(result.steps)
        success.append(result.success)
    return {
        "path": "fast",
        "edits": len(seconds),
        "memory_texts": editor.memory_size,
        "memory_cache_s": round(cache_seconds, 2),
        **{k: round(v, 4) for k, v in _common.summary(seconds).items()},
        "mean_steps": statistics.fmean(steps),
        "median_steps": statistics.median(steps),
        "s_per_step": sum(seconds) / max(sum(steps), 1),
        "success_rate": sum(success) / len(success),
        "measured": True,
    }


def full_step_seconds(base: torch.nn.Module, setup: _common.Setup, memory: list[str], args: Any) -> float:
    """Seconds per full-model step with this memory: (edit capped at ``--full-steps``) - (capped at 1), per step."""
    record = EditRecord.from_dict(setup.records[1])
    timings = {}
    for cap in (1, args.full_steps):
        editor = make_editor(base, setup, memory, False, argparse.Namespace(**{**vars(args), "max_steps": cap}))
        start = time.perf_counter()
        result = editor.edit(record)
        timings[cap] = (time.perf_counter() - start, result.steps)
    (t1, s1), (tk, sk) = timings[1], timings[args.full_steps]
    return (tk - t1) / max(sk - s1, 1)


def measure_full(base: torch.nn.Module, setup: _common.Setup, fast: dict[str, Any], args: Any) -> dict[str, Any]:
    """The full path's cost per step at small memories, a least-squares line through them, extrapolated."""
    points = []
    for size in args.full_memory:
        seconds = full_step_seconds(base, setup, setup.memory_pool[:size], args)
        points.append({"memory_texts": size, "s_per_step": seconds})
    xs, ys = [p["memory_texts"] for p in points], [p["s_per_step"] for p in points]
    if len(points) > 1:
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
        intercept = mean_y - slope * mean_x
    else:
        slope, intercept = ys[0] / max(xs[0], 1), 0.0
    per_step = intercept + slope * args.memory
    return {
        "path": "full",
        "measured_points": points,
        "steps_per_point": args.full_steps,
        "fit": {"intercept_s": intercept, "s_per_memory_text": slope},
        "s_per_step": per_step,
        "s_per_edit": per_step * fast["mean_steps"],
        "measured": False,
        "note": (
            f"s_per_step at {args.memory} memory texts is extrapolated from the measured points with the fitted "
            "line (a step runs the model once on every memory text); s_per_edit = s_per_step x the fast path's "
            "mean steps (both paths take the same steps, see 'check')."
        ),
    }


def check_paths(base: torch.nn.Module, setup: _common.Setup, args: Any) -> dict[str, Any]:
    """Complete edits of the same records on both paths with the same small memory: success and steps agree?"""
    memory = setup.memory_pool[: args.check_memory]
    records = [EditRecord.from_dict(r) for r in setup.records[1 : args.check_edits + 1]]
    out: dict[str, Any] = {"memory_texts": len(memory), "edits": len(records)}
    for fast in (True, False):
        editor = make_editor(base, setup, memory, fast, args)
        results = []
        for record in records:  # each edit on the base model (rolled back), so both paths start alike every time
            start = time.perf_counter()
            result = editor.edit(record)
            results.append((result, time.perf_counter() - start))
            editor.model.unfreeze_patches()
            editor.model.pop_patch()
            editor.model.freeze_patches()
        out["fast" if fast else "full"] = {
            "success": [r.success for r, _ in results],
            "steps": [r.steps for r, _ in results],
            "seconds": [round(s, 3) for _, s in results],
        }
    out["same_success"] = out["fast"]["success"] == out["full"]["success"]
    out["steps_differ_by_at_most_1"] = all(abs(a - b) <= 1 for a, b in zip(out["fast"]["steps"], out["full"]["steps"]))
    out["note"] = (
        "when the stop rule is met, the full path (a transformers.Trainer, stopped by a callback at the end of the "
        "step) has already applied that step's update; the fast path stops before it, so it counts one step less"
    )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    need = args.edits + 1
    if args.model == "tiny":
        setup = _common.tiny_setup(need, args.memory)
    else:
        setup = _common.default_setup(need, args.memory, languages=args.languages)
    if len(setup.records) < need:
        raise ValueError(f"--edits {args.edits} needs {need} records but the set-up has {len(setup.records)}.")
    base = setup.model
    out: dict[str, Any] = {
        "benchmark": "edit_latency",
        "model": args.model,
        "description": setup.description,
        "languages": args.languages,
        "memory_texts": args.memory,
        "max_steps": args.max_steps,
        "machine": _common.machine(),
    }
    out["fast"] = measure_fast(base, setup, args)
    out["full"] = measure_full(base, setup, out["fast"], args)
    out["check"] = check_paths(base, setup, args) if args.check_edits else None
    out["speedup_per_step"] = out["full"]["s_per_step"] / out["fast"]["s_per_step"]
    out["speedup_per_edit"] = out["full"]["s_per_edit"] / out["fast"]["mean_s"]
    out["targets"] = {
        "speedup_per_edit_at_least_50x": out["speedup_per_edit"] >= 50,
        "fast_median_below_0.1s": out["fast"]["median_s"] < 0.1,
        "same_success_both_paths": None if out["check"] is None else out["check"]["same_success"],
    }
    out["peak_rss_mb"] = round(_common.peak_rss_mb(), 1)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "default"], default="default")
    parser.add_argument("--edits", type=_common.positive_int, default=30, help="fast-path edits timed")
    parser.add_argument("--memory", type=_common.positive_int, default=10000, help="memory texts")
    parser.add_argument("--languages", type=_common.language_list, default=["en"], help="training languages")
    parser.add_argument("--max-steps", type=_common.positive_int, default=EditConfig().max_steps)
    parser.add_argument(
        "--full-memory",
        type=_common.int_list,
        default=None,
        help="memory sizes timed on the full path (default: those of 100,300,1000 up to --memory)",
    )
    parser.add_argument("--full-steps", type=_common.positive_int, default=3, help="steps per full-path timing")
    parser.add_argument("--check-edits", type=_common.non_negative_int, default=3, help="edits run on both paths")
    parser.add_argument(
        "--check-memory", type=_common.positive_int, default=None, help="memory texts of the check (default 20)"
    )
    args = parser.parse_args(argv)
    if args.full_memory is None:
        args.full_memory = [size for size in (100, 300, 1000) if size <= args.memory] or [args.memory]
    if args.check_memory is None:
        args.check_memory = min(20, args.memory)
    if args.full_steps < 2:
        parser.error("--full-steps must be at least 2: the per-step cost is the difference to a 1-step edit.")
    if any(size < 1 for size in args.full_memory):
        parser.error("--full-memory sizes must be >= 1, e.g. 100,300,1000.")
    if max(args.full_memory) > args.memory or args.check_memory > args.memory:
        parser.error("--full-memory sizes and --check-memory must not exceed --memory.")
    return args


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
