"""The lifelong-editing curve: ER, GR, locality against the original model, neighbourhood, seconds per edit and
inference overhead after 1, 10, 100, 1,000 edits of one stream, for T-Patcher, MPN, GRACE, FT-L and LoRA.

    python benchmarks/lifelong.py --output runs/lifelong                        # e5-small, every method
    python benchmarks/lifelong.py --methods mpn --points 1,10,100 --output runs/lifelong-mpn
    python benchmarks/lifelong.py --combine runs/a/lifelong.json runs/b/lifelong.json --plot docs/img/lifelong.png
    python benchmarks/lifelong.py --model tiny --points 1,5 --max-countries 8 --memory 40   # smoke run (seconds)

The same as ``peft-mpn lifelong``; see ``peft_mpn.benchmark.lifelong`` for the protocol.
"""

from __future__ import annotations

import sys

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

from peft_mpn.cli import main


if __name__ == "__main__":
    sys.exit(main(["lifelong", *sys.argv[1:]]))
