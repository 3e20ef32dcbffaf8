"""Smoke runs of the benchmark scripts at tiny sizes (no timings are asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_edit_latency_smoke():
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "edit_latency.py"),
            "--model",
            "tiny",
            "--edits",
            "2",
            "--memory",
            "20",
            "--max-steps",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[result.stdout.index("{") :])
    for path in ("fast", "full"):
        assert report[path]["median_s"] > 0 and report[path]["mean_steps"] <= 5
    assert report["speedup_per_step"] > 0
