"""Which facts of the counterfactual benchmark the base Gemma 3 270M knows, per language and relation (offline, the
``llm`` extra).

A fact is known in a language when greedy decoding after its key-value prompt produces the whole true answer (the
argmax at every answer position under teacher forcing, which is the same thing), the criterion of
``peft_mpn.data.counterfactual.keep_known``. Also reported: the share whose first answer token is the argmax, and the
median probability of the whole answer. Prints JSON.

    python benchmarks/counterfactual_known.py --out known.json
    python benchmarks/counterfactual_known.py --splits validation --relations capital
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _common  # noqa: E402
import torch  # noqa: E402

from peft_mpn.data.counterfactual import (  # noqa: E402
    DEFAULT_LANGUAGES,
    build_counterfactual_records,
    keep_known,
    language_counts,
    load_generation_templates,
    one_per_country,
)
from peft_mpn.data.countries import RELATIONS  # noqa: E402
from peft_mpn.models import load_causal_lm  # noqa: E402
from peft_mpn.tasks.generation.collator import EncodedEdit, GenerationEditCollator, pad_right  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", nargs="+", default=list(DEFAULT_LANGUAGES))
    parser.add_argument("--relations", nargs="+", default=list(RELATIONS))
    parser.add_argument("--splits", nargs="+", default=None, help="default: every split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--templates", help="a generation_templates.json to use instead of the packaged one")
    parser.add_argument("--out", help="also write the JSON report here")
    return parser.parse_args(argv)


def answer_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, rows: list[list[int]]) -> list[torch.Tensor]:
    """Next-token logits at the given positions of each row only: the LM head (262k words) is most of the cost, so
    it runs on the answer positions rather than on every position."""
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    out = []
    for row, positions in enumerate(rows):
        logits = model.lm_head(hidden[row, positions]).float()
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        out.append(logits)
    return out


def score(model: Any, encoded: Sequence[EncodedEdit], pad_id: int, batch_size: int) -> list[dict[str, Any]]:
    """Per encoded answer: all tokens argmax (greedy), first token argmax, and the answer's probability."""
    out = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            ids, mask = pad_right([e.ids for e in chunk], pad_id)
            logits = answer_logits(model, ids, mask, [e.target_positions for e in chunk])
            for enc, rows in zip(chunk, logits):
                targets = torch.tensor(enc.target_ids)
                logprobs = torch.log_softmax(rows, dim=-1)
                argmax = rows.argmax(-1)
                out.append(
                    {
                        "greedy": bool((argmax == targets).all()),
                        "first": bool(argmax[0] == targets[0]),
                        "prob": float(logprobs.gather(1, targets[:, None]).sum().exp()),
                    }
                )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    templates = load_generation_templates(args.templates) if args.templates else None
    records = build_counterfactual_records(
        args.languages, args.relations, seed=args.seed, splits=args.splits, templates=templates
    )
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(dtype=args.dtype)
    load_seconds = time.perf_counter() - start
    collator = GenerationEditCollator(tokenizer, ["en"], [])
    facts = [rec.fact_record() for rec in records]
    keys = [(fact, lang) for fact in facts for lang in fact.prompt]
    encoded = [collator.encode_record(fact, lang) for fact, lang in keys]
    start = time.perf_counter()
    scores = score(model, encoded, collator.pad_id, args.batch_size)
    score_seconds = time.perf_counter() - start
    by_fact: dict[str, dict[str, bool]] = defaultdict(dict)
    table: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for (fact, lang), s in zip(keys, scores):
        by_fact[fact.id][lang] = s["greedy"]
        for rel in (fact.meta["relation"], "all"):
            for name, value in s.items():
                table[rel][lang][name].append(value)
    summary = {
        rel: {
            lang: {
                "known": sum(v["greedy"]),
                "first_token": sum(v["first"]),
                "of": len(v["greedy"]),
                "median_prob": round(statistics.median(v["prob"]), 4),
            }
            for lang, v in by_lang.items()
        }
        for rel, by_lang in table.items()
    }
    kept = keep_known(records, lambda fact: by_fact[fact.id])
    one = one_per_country(kept)
    return {
        "records": len(records),
        "countries": len({r.country for r in records}),
        "prompts": len(encoded),
        "languages": args.languages,
        "splits": args.splits or "all",
        "known": summary,
        "keep_known": {"records": len(kept), "languages": language_counts(kept)},
        "keep_known_one_per_country": {
            "records": len(one),
            "languages": language_counts(one),
            "by_split": {s: sum(r.split == s for r in one) for s in ("train", "validation", "test")},
        },
        "load_seconds": round(load_seconds, 1),
        "score_seconds": round(score_seconds, 1),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    _common.emit_json(run(args), args.out)


if __name__ == "__main__":
    main()
