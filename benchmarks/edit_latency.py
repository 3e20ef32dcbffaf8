"""Edit latency: the fast path (cached FFN inputs) against the full-model path, on the same edits.

Prints JSON: seconds per edit (median, p90), steps per edit, success, and the speed-up, per path.

    python benchmarks/edit_latency.py --model tiny --edits 5
    python benchmarks/edit_latency.py --model default --edits 5 --memory 1000   # multilingual-e5-small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from peft_mpn import EditConfig, EditRecord, MPNConfig, MPNEditor  # noqa: E402


def tiny_setup(n_edits: int, n_memory: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(200)]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=256,
        initializer_range=0.5,
    )
    model = BertForSequenceClassification(config).eval()
    rng = torch.Generator().manual_seed(0)

    def text():
        return " ".join(words[i] for i in torch.randint(0, 200, (12,), generator=rng).tolist())

    memory = [text() for _ in range(n_memory)]
    records = [{"id": f"e{i}", "inputs": {"en": text()}} for i in range(n_edits)]
    return model, tokenizer, memory, records


def default_setup(n_edits: int, n_memory: int):
    from peft_mpn.classifier import load_classifier_any
    from peft_mpn.data import build_benchmark
    from peft_mpn.models import load_tokenizer

    model = load_classifier_any(None, num_labels=2).eval()
    tokenizer = load_tokenizer(None)
    bench = build_benchmark(languages=["en"], relations=["capital"], seed=0)
    texts = bench["train"]["text"]
    memory = texts[:n_memory]
    tests = bench["test"]["text"][:n_edits]
    records = [{"id": f"e{i}", "inputs": {"en": t}} for i, t in enumerate(tests)]
    return model, tokenizer, memory, records


def run(args: argparse.Namespace) -> dict:
    setup = tiny_setup if args.model == "tiny" else default_setup
    out = {
        "model": args.model,
        "edits": args.edits,
        "memory": args.memory,
        "max_steps": args.max_steps,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
    }
    for fast in (True, False):
        model, tokenizer, memory, records = setup(args.edits, args.memory)
        with torch.no_grad():
            batch = tokenizer([r["inputs"]["en"] for r in records], padding=True, return_tensors="pt")
            predictions = model(**batch).logits.argmax(-1).tolist()
        for record, pred in zip(records, predictions):
            record["label"] = 1 - pred  # every edit has to flip the model
        peft_model = get_peft_model(model, MPNConfig(task_type="SEQ_CLS"))
        editor = MPNEditor(
            peft_model,
            tokenizer,
            ["en"],
            memory,
            fast=fast,
            progress=False,
            config=EditConfig(max_steps=args.max_steps),
        )
        editor.edit(EditRecord.from_dict(records[0]))  # warm-up (caches the memory on the fast path)
        peft_model.unfreeze_patches()
        peft_model.pop_patch()
        seconds, steps, success = [], [], []
        for record in records:
            start = time.perf_counter()
            result = editor.edit(EditRecord.from_dict(record))
            seconds.append(time.perf_counter() - start)
            steps.append(result.steps)
            success.append(result.success)
        seconds.sort()
        out["fast" if fast else "full"] = {
            "median_s": statistics.median(seconds),
            "p90_s": seconds[min(len(seconds) - 1, int(0.9 * len(seconds)))],
            "mean_steps": statistics.mean(steps),
            "s_per_step": sum(seconds) / max(sum(steps), 1),
            "success": sum(success) / len(success),
        }
    out["speedup_per_edit"] = out["full"]["median_s"] / out["fast"]["median_s"]
    out["speedup_per_step"] = out["full"]["s_per_step"] / out["fast"]["s_per_step"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--memory", type=int, default=200)
    parser.add_argument("--max-steps", type=int, default=100)
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
