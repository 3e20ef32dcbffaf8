"""Smoke runs of the benchmark scripts at tiny sizes, in process (no timings are asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (which imports its sibling ``_common``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_edit_latency_smoke(monkeypatch):
    bench = load("edit_latency", monkeypatch)
    argv = "--model tiny --edits 2 --memory 20 --max-steps 5 --full-memory 5,10 --full-steps 2 --check-edits 1"
    args = bench.parse_args([*argv.split(), "--check-memory", "5"])
    report = bench.run(args)
    json.dumps(report)  # JSON-ready
    assert report["fast"]["edits"] == 2 and report["fast"]["mean_steps"] <= 5 and report["fast"]["median_s"] > 0
    assert [p["memory_texts"] for p in report["full"]["measured_points"]] == [5, 10]
    assert report["full"]["measured"] is False and "extrapolated" in report["full"]["note"]
    assert report["check"]["steps_differ_by_at_most_1"] and report["check"]["same_success"]
    assert set(report["targets"]) == {
        "speedup_per_edit_at_least_50x",
        "fast_median_below_0.1s",
        "same_success_both_paths",
    }


def test_edit_latency_rejects_bad_arguments(monkeypatch, capsys):
    bench = load("edit_latency", monkeypatch)
    for argv, message in (
        (["--full-steps", "1"], "--full-steps must be at least 2"),
        (["--memory", "10", "--full-memory", "5,50"], "must not exceed --memory"),
        (["--edits", "0"], "expected a whole number >= 1"),
        (["--languages", "fr,de"], "including en"),
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err


def test_inference_overhead_smoke(monkeypatch):
    bench = load("inference_overhead", monkeypatch)
    from peft_mpn import MPNLayer

    monkeypatch.setattr(MPNLayer, "SPARSE_MIN_NEURONS", 8)  # the sparse path runs at this size too
    argv = (
        "--model tiny --batch 8 --tokens 8 --patches 0,10 --merged 10 --separate 10 --rounds 3 --firing random,0.5 "
        "--dense 10 --fp32-screen 10"
    )
    args = bench.parse_args(argv.split())
    report = bench.run(args)
    assert set(report["ratio_vs_base"]) == {"0", "10", "10@0.5"} and set(report["merged_ratio_vs_base"]) == {"10"}
    assert set(report["separate_ratio_vs_base"]) == {"10"}
    assert set(report["dense_ratio_vs_base"]) == set(report["fp32_screen_ratio_vs_base"]) == {"10", "10@0.5"}
    assert report["sparse_state"]["10@0.5"]["silent_below"] == -6.0
    assert report["ideal_ratio"]["0"] == 1.0 and report["ideal_ratio"]["10"] > 1.0
    assert all(len(v) for v in report["latency"].values())


def test_stream_smoke(monkeypatch, tmp_path):
    bench = load("stream", monkeypatch)
    plot = tmp_path / "stream.png"
    args = bench.parse_args(
        f"--model tiny --edits 6 --memory 20 --locality 10 --max-steps 5 --block 3 --plot {plot}".split()
    )
    report = bench.run(args)
    assert report["records"] == 6 and report["edited"] + report["skipped_already_correct"] == 6
    assert report["patches"] == report["edited"] and report["adapter_bytes_per_patch"] > 0
    assert 0.0 <= report["edit_retention"] <= 1.0 and 0.0 <= report["locality"] <= 1.0
    assert report["peak_rss_mb"] > 0 and plot.stat().st_size > 0


def test_scaling_smoke(monkeypatch, tmp_path):
    bench = load("scaling", monkeypatch)
    plot = tmp_path / "scaling.png"
    args = bench.parse_args(
        f"--model tiny --memory-sizes 10,20 --patch-counts 0,5 --patch-memory 10 --edits 1 --max-steps 3 "
        f"--plot {plot}".split()
    )
    report = bench.run(args)
    assert [p["memory_texts"] for p in report["memory"]] == [10, 20]
    assert [p["earlier_patches"] for p in report["patches"]] == [0, 5]
    assert plot.stat().st_size > 0


def test_benchmarks_are_scripts():
    for name in ("edit_latency", "inference_overhead", "stream", "scaling"):
        text = (BENCHMARKS / f"{name}.py").read_text()
        assert 'if __name__ == "__main__":' in text and "from __future__ import annotations" in text


def test_lifelong_smoke(monkeypatch, tmp_path, capsys):
    from peft_mpn.cli import main

    argv = "--model tiny --points 1,4 --max-countries 8 --memory 30 --timing-rounds 1 --eval-all 2 --eval-stride 2"
    argv += " --quiet"
    assert main(["lifelong", *argv.split(), "--output", str(tmp_path), "--plot", str(tmp_path / "curve.png")]) == 0
    report = json.loads((tmp_path / "lifelong.json").read_text())
    rows = report["rows"]
    assert [(r["method"], r["edits"]) for r in rows] == [
        (m, n) for n in (1, 4) for m in ("T-Patcher", "MPN", "GRACE", "FT-L", "LoRA")
    ]  # breadth first: every method up to a point before any goes further
    for row in rows:
        assert all(0.0 <= row[k] <= 1.0 for k in ("ER", "GR_train", "GR_heldout", "locality") if row[k] is not None)
        assert row["seconds_per_edit"] > 0 and row["inference_ratio"] > 0
        if row["method"] in ("MPN", "T-Patcher"):  # the false-fire diagnostics of the patch methods
            assert row["false_fires"]["n"] == row["inputs_with_a_firing_patch"]
            assert row["flipped_fires"]["n"] + row["flipped_without_a_firing_patch"] == row["locality_flipped"]
    assert "| MPN | 4 |" in capsys.readouterr().out and (tmp_path / "curve.png").stat().st_size > 0
    again = main(["lifelong", "--combine", str(tmp_path / "lifelong.json")])
    assert again == 0 and "| LoRA | 4 |" in capsys.readouterr().out
    assert main(["lifelong", "--model", "tiny", "--max-countries", "8", "--points", "5000", "--quiet"]) == 2
    assert "ask for points up to" in capsys.readouterr().err


def test_counterfactual_known_smoke(monkeypatch, capsys):
    """The base-knowledge scan on a tiny random Gemma 3 with the real Gemma tokenizer (from the model cache)."""
    from peft_mpn.data import gemma3

    path = gemma3.causal_lm_dir()
    if not gemma3._is_causal_lm_complete(path):
        pytest.skip("the Gemma 3 cache (peft_mpn.models.load_causal_lm) is absent: its tokenizer is needed")
    import torch
    import transformers as tf

    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    config = tf.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = tf.Gemma3ForCausalLM(config).eval()
    module = load("counterfactual_known", monkeypatch)
    monkeypatch.setattr(module, "load_causal_lm", lambda dtype: (model, tokenizer))
    module.main(["--splits", "validation", "--relations", "capital", "--languages", "en", "ja"])
    report = json.loads(capsys.readouterr().out)
    assert report["languages"] == ["en", "ja"] and report["prompts"] == 2 * report["records"] > 0
    known = report["known"]["capital"]
    assert set(known) == {"en", "ja"} and known["en"]["of"] == report["records"]
    assert 0 <= known["ja"]["known"] <= known["ja"]["first_token"] <= known["ja"]["of"]
