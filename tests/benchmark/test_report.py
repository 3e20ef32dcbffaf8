"""Reports: results.json, report.md and report.png from a small synthetic experiment."""

from __future__ import annotations

import json
import math
import struct

import pytest

from peft_mpn.benchmark.report import HELDOUT_MARK, markdown_table, write_report
from peft_mpn.editing.metrics import (
    edit_retention,
    generalization,
    locality,
    monolingual_generalization,
    neighbourhood_locality,
    summarize,
)


TRAIN = ["en", "fr", "de"]
HELDOUT = ["es", "ru", "zh"]
LABELS = [1, 0, 1, 1]
BEFORE = {lang: [0, 1, 0, 1] for lang in TRAIN + HELDOUT}


def _method(after: dict[str, list[int]], success: list[bool], seconds: float) -> dict:
    results = [{"id": str(i), "success": s, "seconds": seconds * (i + 1)} for i, s in enumerate(success)]
    results.append({"id": "skipped", "success": True, "skipped": True})
    return summarize(
        results,
        train_languages=TRAIN,
        heldout_languages=HELDOUT,
        gr=generalization(BEFORE, after, LABELS),
        mono_gr=monolingual_generalization(None, {"en": [[1, 1], [0], [1], [0]]}, LABELS),
        er=edit_retention([1, 0, 1, 0], LABELS),
        locality=locality([1, 0, 1, 1, 0], [1, 0, 0, 1, 0], labels=[1, 0, 1, 0, 0]),
        neighbourhood=neighbourhood_locality({"en": [1, 0], "fr": [1, 1]}, {"en": [1, 1], "fr": [1, 1]}),
    )


@pytest.fixture
def results() -> dict:
    mpn_after = {"en": [1, 0, 1, 1], "fr": [1, 0, 1, 1], "de": [1, 0, 0, 1], "es": [1, 0, 0, 1]}
    mpn_after |= {"ru": [1, 1, 0, 1], "zh": [0, 1, 0, 1]}
    tp_after = {"en": [1, 0, 1, 1], "fr": [0, 0, 1, 1], "de": [0, 1, 0, 1], "es": [0, 1, 0, 1]}
    tp_after |= {"ru": [0, 1, 0, 1], "zh": [0, 1, 0, 1]}
    ft_after = {lang: [1, 0, 1, 0] for lang in TRAIN + HELDOUT}
    ft_after["zh"] = [None] * 4  # not measured: nan in the metrics, null in results.json, n/a in the report
    return {
        "methods": {
            "tpatcher": _method(tp_after, [True, True, True, True], 0.8),
            "mpn": _method(mpn_after, [True, True, True, False], 1.5),
            "ft": _method(ft_after, [True, False, True, False], 0.3),
        },
        "train_languages": TRAIN,
        "heldout_languages": HELDOUT,
        "setup": {
            "model": "intfloat/multilingual-e5-small",
            "n_edits": 4,
            "machine": "2 CPU cores",
            "command": "peft-mpn experiment --methods tpatcher mpn ft",
        },
    }


def _finite(value):
    """``results`` with nan replaced by None, as results.json stores it."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def test_write_report_files_and_json_round_trip(results, tmp_path):
    out = tmp_path / "report"
    paths = write_report(results, out)
    assert set(paths) == {"json", "markdown", "png"}
    assert paths == {"json": out / "results.json", "markdown": out / "report.md", "png": out / "report.png"}
    assert all(path.is_file() for path in paths.values())
    # ft's zh figures are nan: results.json holds null there, and stays strict JSON.
    assert math.isnan(results["methods"]["ft"]["GR"]["zh"]["all"])
    loaded = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert loaded == _finite(results)
    assert "NaN" not in paths["json"].read_text(encoding="utf-8")
    # No temporary file left behind.
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "report.png", "results.json"]


def test_json_is_strict_with_nan(tmp_path):
    summary = summarize([], train_languages=["en"], heldout_languages=["fr"])
    paths = write_report({"methods": {"mpn": summary}, "train_languages": ("en",)}, tmp_path, plot=False)
    assert set(paths) == {"json", "markdown"}
    loaded = json.loads(paths["json"].read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert loaded["methods"]["mpn"]["SR"] is None and loaded["train_languages"] == ["en"]
    assert "n/a" in paths["markdown"].read_text()


def test_markdown_rows_columns_and_heldout_marking(results, tmp_path):
    table = markdown_table(results)
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header, rows = lines[0], lines[2:]
    assert len(rows) == 3 and [r.split("|")[1].strip() for r in rows] == ["tpatcher", "mpn", "ft"]
    for lang in TRAIN:
        assert f"| GR {lang} |" in header
    for lang in HELDOUT:
        assert f"| GR {lang}{HELDOUT_MARK} |" in header
    for name in ("SR", "ER", "Locality raw", "Locality norm.", "Neighbourhood", "s/edit"):
        assert name in header
    assert all(row.count("|") == header.count("|") for row in lines)
    assert f"`{HELDOUT_MARK}` held-out language" in table
    # mpn: 3 of 4 edits succeed; in zh ([0, 1, 0, 1] after, labels [1, 0, 1, 1]) only edit 3 is right.
    mpn = next(r for r in rows if r.startswith("| mpn |")).split("|")
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in mpn]))
    assert cells["SR"] == "0.750" and cells["GR zh*"] == "0.250"
    # 1 of 5 locality predictions moved; accuracy 0.8 -> 0.6.
    assert cells["Locality raw"] == "0.800" and cells["Locality norm."] == "0.750"
    assert cells["s/edit median (p90)"] == "3.75 (5.55)"  # 1.5, 3, 4.5, 6 s

    fixed = markdown_table(results, "fixed")
    assert f"GR-fixed ru{HELDOUT_MARK}" in fixed and "GR-fixed fr |" in fixed
    # mpn in ru: wrong before were edits 0, 1, 2 (before [0, 1, 0, 1], labels [1, 0, 1, 1]); edit 0 is fixed.
    mpn_fixed = next(line for line in fixed.splitlines() if line.startswith("| mpn |"))
    assert mpn_fixed.split("|")[6].strip() == "0.333 (1/3)"
    ft_row = next(line for line in table.splitlines() if line.startswith("| ft |"))
    assert ft_row.split("|")[9].strip() == "n/a"  # ft's zh column
    with pytest.raises(ValueError):
        markdown_table(results, "some")
    with pytest.raises(ValueError, match="methods"):
        markdown_table({"train_languages": TRAIN})
    with pytest.raises(ValueError, match=r"results\['methods'\]\['mpn'\] must be a dict of metrics"):
        markdown_table({"methods": {"mpn": 1}})

    report = write_report(results, tmp_path, plot=False)["markdown"].read_text(encoding="utf-8")
    assert table.strip() in report and fixed.strip() in report
    assert "intfloat/multilingual-e5-small" in report and "`peft-mpn experiment" in report
    assert "Locality norm." in report and "TrainR/TestR" in report


def test_png_is_a_real_plot(results, tmp_path):
    png = write_report(results, tmp_path)["png"]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert 400 < width < 4000 and 300 < height < 3000


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_report(results, tmp_path, monkeypatch):
    paths = write_report(results, tmp_path)
    old_png = paths["png"].read_bytes()
    from matplotlib.figure import Figure

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(results, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "report.png", "results.json"]
    assert paths["png"].read_bytes() == old_png
