"""Seconds per generation edit with the LM fast path and with the full model, on the CPU or a GPU; prints JSON.

Two models:
- ``--model gemma3`` (default): Gemma 3 270M from the ``llm`` extra (``peft_mpn.models.load_causal_lm``), with
  counterfactual capital facts in English and French.
- ``--model gemma3-shape``: a model of Gemma 3 270M's exact shape (18 layers, width 640, FFN 2048, 262,144-token
  vocabulary) with random weights and a word-level tokenizer: for timing where the weights cannot travel (a lent GPU
  machine). Its steps per edit say nothing about the real model; its seconds per step do.

Each edit is made on a fresh copy of the model, once with ``fast=True`` and once with ``fast=False``, with the same
record, memory and `EditConfig`, and timed end to end (``EditResult.seconds``). The first edit of each path is a
warm-up and is left out of the medians.

    python benchmarks/causal_edit_latency.py --edits 4                          # real model, CPU
    python benchmarks/causal_edit_latency.py --model gemma3-shape --device cuda  # shape only, GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from typing import Any

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from peft_mpn import CausalLMEditor, EditConfig


FACTS = [  # (en prompt, fr prompt, counterfactual en target, fr target)
    ("The capital of France is", "La capitale de la France est", " Rome", " Rome"),
    ("The capital of Japan is", "La capitale du Japon est", " Cairo", " Le Caire"),
    ("The capital of Germany is", "La capitale de l'Allemagne est", " Madrid", " Madrid"),
    ("The capital of Canada is", "La capitale du Canada est", " Lima", " Lima"),
    ("The capital of Egypt is", "La capitale de l'Égypte est", " Oslo", " Oslo"),
    ("The capital of Brazil is", "La capitale du Brésil est", " Vienna", " Vienne"),
]
MEMORY = [
    "The sun rises in the east.",
    "Le soleil se lève à l'est.",
    "Water boils at one hundred degrees.",
    "L'eau bout à cent degrés.",
    "The cat sleeps on the sofa.",
    "Le chat dort sur le canapé.",
    "Mount Everest is the highest mountain.",
    "Le mont Everest est la plus haute montagne.",
]


def shape_model(dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """Gemma 3 270M's shape with random weights, and a word-level tokenizer over the benchmark's words."""
    words = sorted(
        {w for fact in FACTS for text in fact for w in text.split()} | {w for t in MEMORY for w in t.split()}
    )
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    config = tf.Gemma3TextConfig(
        vocab_size=262_144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
    )
    torch.manual_seed(0)
    return tf.Gemma3ForCausalLM(config).to(dtype).eval(), tokenizer


def record(i: int) -> dict[str, Any]:
    en, fr, target_en, target_fr = FACTS[i % len(FACTS)]
    return {"id": f"fact-{i}", "prompt": {"en": en, "fr": fr}, "target": {"en": target_en, "fr": target_fr}}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(base: torch.nn.Module, tokenizer: Any, fast: bool, n: int, config: EditConfig, device: str) -> list[dict]:
    rows = []
    for i in range(n):
        model = copy.deepcopy(base)
        editor = CausalLMEditor(model, tokenizer, languages=["en", "fr"], memory=MEMORY, config=config, fast=fast)
        sync(device)
        start = time.perf_counter()
        result = editor.edit(record(i))
        sync(device)
        rows.append(
            {
                "id": result.id,
                "fast": editor.fast,
                "success": result.success,
                "skipped": result.skipped,
                "steps": result.steps,
                "seconds": time.perf_counter() - start,
            }
        )
        del editor, model
    return rows


def summary(rows: list[dict]) -> dict[str, Any]:
    timed = [r for r in rows[1:] if not r["skipped"]] or [r for r in rows if not r["skipped"]]
    if not timed:
        return {"edits": 0}
    seconds = [r["seconds"] for r in timed]
    steps = [r["steps"] for r in timed]
    return {
        "edits": len(timed),
        "median_seconds_per_edit": statistics.median(seconds),
        "median_steps": statistics.median(steps),
        "seconds_per_step": sum(seconds) / max(1, sum(steps)),
        "success": sum(r["success"] for r in timed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gemma3", "gemma3-shape"], default="gemma3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--edits", type=int, default=4, help="edits per path, the first a warm-up (default: 4)")
    parser.add_argument("--max-steps", type=int, default=100, help="EditConfig.max_steps (default: 100)")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True, help="also time fast=False")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.model == "gemma3":
        from peft_mpn.models import load_causal_lm

        base, tokenizer = load_causal_lm(dtype=dtype)
    else:
        base, tokenizer = shape_model(dtype)
    base = base.to(args.device)
    config = EditConfig(max_steps=args.max_steps)
    out: dict[str, Any] = {
        "model": args.model,
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
        "dtype": args.dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "max_steps": args.max_steps,
    }
    out["fast"] = run(base, tokenizer, True, args.edits, config, args.device)
    out["fast_summary"] = summary(out["fast"])
    if args.full:
        out["full"] = run(base, tokenizer, False, args.edits, config, args.device)
        out["full_summary"] = summary(out["full"])
        fast_step, full_step = out["fast_summary"].get("seconds_per_step"), out["full_summary"].get("seconds_per_step")
        if fast_step and full_step:
            out["speedup_per_step"] = full_step / fast_step
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
