"""Choose FT-L's, LoRA's and GRACE's hyperparameters on the VALIDATION split (never the test split).

One stream of ``--edits`` records about validation countries per setting (the lifelong benchmark's
``split="validation"``: locality on claims about training countries kept out of the memory). The score of a setting
is the mean of ER, locality against the original model and neighbourhood at the end of the stream, ties broken by
GR on the training languages; it is fixed before the search. Prints every setting's row and the chosen one.

    python benchmarks/tune_baselines.py                       # the grid of docs/benchmark.md (~10 min)
    python benchmarks/tune_baselines.py --model tiny --edits 4 --max-countries 8   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys

import _common

from peft_mpn.benchmark.lifelong import LifelongConfig, prepare, run_method
from peft_mpn.editing.baselines import BaselineConfig
from peft_mpn.editing.grace import GraceConfig


GRID = {
    "ft": [
        {"lr": lr, "norm_constraint": eps, "max_steps": 20, "replay": replay}
        for lr, eps, replay in [
            (1e-4, None, 0),
            (1e-5, None, 0),
            (1e-6, None, 0),
            (1e-5, None, 64),
            (1e-4, 5e-4, 64),
        ]
    ],
    "lora": [{"lr": lr, "max_steps": 20, "replay": replay} for lr, replay in [(1e-3, 0), (1e-4, 0), (1e-4, 64)]],
    "grace": [{"radius": r} for r in (1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0)],
}


def score(row: dict) -> tuple[float, float]:
    parts = [row[k] for k in ("ER", "locality", "neighbourhood") if row.get(k) is not None]
    return (sum(parts) / len(parts), row.get("GR_train") or 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="ft,lora,grace")
    parser.add_argument("--edits", type=_common.positive_int, default=100)
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-countries", type=_common.positive_int, default=None)
    parser.add_argument("--memory", type=_common.positive_int, default=1000)
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    parser.add_argument("--grace-radii", default=None, help="only these GRACE radii, e.g. 8,12,16")
    args = parser.parse_args(argv)
    config = LifelongConfig(
        points=[args.edits], split="validation", model=args.model, max_countries=args.max_countries,
        memory_size=args.memory, timing_rounds=0,
    )  # fmt: skip
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    prepared = prepare(config, log)
    if args.grace_radii:
        GRID["grace"] = [{"radius": float(r)} for r in args.grace_radii.split(",")]
    rows, chosen = [], {}
    for method in args.methods.split(","):
        best = None
        for setting in GRID[method]:
            if method == "grace":
                config.grace = GraceConfig(**setting)
            else:
                config.baseline = BaselineConfig(**setting)
            row = run_method(config, method, prepared.base, prepared.tokenizer, prepared.data, prepared.cache,
                             prepared.original, log)[-1]  # fmt: skip
            row["setting"] = setting
            row["score"] = score(row)[0]
            rows.append(row)
            if best is None or score(row) > score(best):
                best = row
        chosen[method] = best["setting"]
    out = {"split": "validation", "edits": args.edits, "rows": rows, "chosen": chosen}
    print(json.dumps(out, indent=2, default=lambda _: None))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(out, handle, indent=2, default=lambda _: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
