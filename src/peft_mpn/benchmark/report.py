"""Experiment reports: ``results.json``, ``report.md`` and ``report.png`` from the metrics of every method.

``results`` is the dict an experiment runner assembles::

    {"methods": {"tpatcher": summarize(...), "mpn": summarize(...), ...},   # see peft_mpn.metrics.summarize
     "train_languages": ["en", "fr", "de"],    # the languages MPN trained on
     "heldout_languages": ["es", "ru"],        # languages no method trained on
     "setup": {"model": ..., "n_edits": ..., "machine": ..., "command": ...}}  # free-form

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a crash never
leaves half a report behind. Held-out languages are marked with ``*`` in the tables and sit apart, on a shaded
background, in the plot.

Example:
    >>> paths = write_report(results, "runs/xfever")  # doctest: +SKIP
    >>> print(markdown_table(results))                # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write, atomic_write_text


__all__ = ["HELDOUT_MARK", "markdown_table", "write_report"]

#: Appended to held-out language names in tables and plot labels.
HELDOUT_MARK = "*"
MISSING = "n/a"
_FOOTNOTE = (
    f"`{HELDOUT_MARK}` held-out language: no method trained on it (MPN's training languages are {{train}}); its GR "
    "is zero-shot cross-lingual transfer."
)


# ---------------------------------------------------------------------------------------------------- helpers
def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for ``None``/``nan``/``inf``/non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: Any, digits: int = 3) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number:.{digits}f}"


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _methods(results: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    methods = results.get("methods") if isinstance(results, Mapping) else None
    if not isinstance(methods, Mapping):
        raise ValueError("results must be a dict with a 'methods' dict: {'methods': {name: summarize(...)}, ...}.")
    bad = next((name for name, metrics in methods.items() if not isinstance(metrics, Mapping)), None)
    if bad is not None:
        raise ValueError(f"results['methods'][{bad!r}] must be a dict of metrics (a summarize(...) result).")
    return methods


def _languages(results: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(languages in column order, the held-out ones): training languages, unlisted ones, then held-out ones."""
    train = list(results.get("train_languages") or [])
    heldout = [lang for lang in results.get("heldout_languages") or [] if lang not in train]
    seen = [lang for metrics in _methods(results).values() for lang in (metrics.get("GR") or {})]
    others = [lang for lang in dict.fromkeys(seen) if lang not in train and lang not in heldout]
    return list(dict.fromkeys(train + others + heldout)), heldout


def _label(lang: str, heldout: Sequence[str]) -> str:
    return f"{lang}{HELDOUT_MARK}" if lang in heldout else lang


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join([_row(header), _row(align), *(_row(r) for r in rows)])


def _footnote(results: Mapping[str, Any], heldout: Sequence[str]) -> str:
    train = ", ".join(results.get("train_languages") or []) or MISSING
    return _FOOTNOTE.format(train=train) if heldout else ""


def _fixed_cell(entry: Any) -> str:
    rate = _fmt(_get(entry, "fixed"))
    correct, total = _get(entry, "correct_fixed"), _get(entry, "n_fixed")
    if rate == MISSING and not total:
        return MISSING
    return f"{rate} ({correct}/{total})" if total is not None and correct is not None else rate


def _seconds_cell(stats: Any) -> str:
    median, p90 = _number(_get(stats, "median")), _number(_get(stats, "p90"))
    if median is None:
        return MISSING
    return f"{median:.2f} ({p90:.2f})" if p90 is not None else f"{median:.2f}"


# ---------------------------------------------------------------------------------------------------- markdown
def markdown_table(results: Mapping[str, Any], gr: str = "all") -> str:
    """The results as a markdown table, one row per method, with a footnote for the held-out marking.

    Args:
        results: The experiment results (see the module docstring).
        gr: ``"all"``: the main table: SR, ER, GR per language (share of translations right after the edit), the
            GR means, monolingual GR, locality raw and normalised, neighbourhood locality and seconds per edit.
            ``"fixed"``: GR per language among translations wrong before the edit, as ``rate (right/wrong
            before)``, with the means.

    Returns:
        The markdown text (table, then the footnote if there are held-out languages); missing figures read
        ``n/a``.

    Raises:
        ValueError: For a ``results`` without a ``methods`` dict, or an unknown ``gr``.
    """
    if gr not in ("all", "fixed"):
        raise ValueError(f"gr must be 'all' or 'fixed', not {gr!r}.")
    methods = _methods(results)
    languages, heldout = _languages(results)
    mark = HELDOUT_MARK if heldout else ""
    rows = []
    if gr == "all":
        header = [
            "Method",
            "SR",
            "ER",
            *(f"GR {_label(lang, heldout)}" for lang in languages),
            "GR train",
            f"GR held-out{mark}",
            "mono GR",
            "Locality raw",
            "Locality norm.",
            "Neighbourhood",
            "s/edit median (p90)",
        ]
        for name, m in methods.items():
            rows.append(
                [
                    str(name),
                    _fmt(m.get("SR")),
                    _fmt(m.get("ER")),
                    *(_fmt(_get(m, "GR", lang, "all")) for lang in languages),
                    _fmt(m.get("GR_mean_train")),
                    _fmt(m.get("GR_mean_heldout")),
                    _fmt(m.get("mono_GR_mean")),
                    _fmt(_get(m, "locality", "retain_rate")),
                    _fmt(_get(m, "locality", "normalized")),
                    _fmt(_get(m, "neighbourhood", "retain_rate")),
                    _seconds_cell(m.get("seconds_per_edit")),
                ]
            )
    else:
        header = [
            "Method",
            *(f"GR-fixed {_label(lang, heldout)}" for lang in languages),
            "GR-fixed train",
            f"GR-fixed held-out{mark}",
        ]
        for name, m in methods.items():
            rows.append(
                [
                    str(name),
                    *(_fixed_cell(_get(m, "GR", lang)) for lang in languages),
                    _fmt(m.get("GR_fixed_mean_train")),
                    _fmt(m.get("GR_fixed_mean_heldout")),
                ]
            )
    footnote = _footnote(results, heldout)
    return _table(header, rows) + (f"\n\n{footnote}" if footnote else "") + "\n"


_DEFINITIONS = """\
- **SR** (success rate): edits predicted right right after they were made (skipped records, already right, left
  out).
- **ER** (edit retention): past edits still predicted right at the end of the stream.
- **GR** (cross-lingual generalisation), per language: share of the edit's translations predicted right after the
  edit. It includes translations the unedited model already got right; **GR-fixed** counts only those that were
  wrong before, shown as `rate (right after / wrong before)`, which is how often an edit actually carried over.
  *GR train* and *GR held-out* are means over languages (English, the edit itself, excluded).
- **mono GR**: GR on paraphrases of the edit.
- **Locality raw**: share of unrelated inputs whose prediction did not change at all (any flip counts).
- **Locality norm.**: Transformer-Patcher's TrainR/TestR, accuracy after / accuracy before on the same unrelated
  inputs. Flips that cancel out (one to right, one to wrong) leave it unchanged, and it can exceed 1; it needs
  labelled inputs.
- **Neighbourhood**: raw retain rate on other claims about the same subject as the edit; a patch that fires on
  everything about a country is not an edit of one fact.
- **s/edit**: wall-clock seconds per edit (median, 90th percentile in brackets), edited records only.
- `n/a`: not measured, or nothing to measure.
"""


def _setup_lines(results: Mapping[str, Any]) -> list[str]:
    lines = []
    setup = results.get("setup") or {}
    for key, value in setup.items() if isinstance(setup, Mapping) else []:
        text = json.dumps(jsonable(value), ensure_ascii=False) if isinstance(value, (Mapping, list)) else str(value)
        lines.append(f"- **{key}**: `{text}`" if key == "command" else f"- **{key}**: {text}")
    train = ", ".join(results.get("train_languages") or []) or MISSING
    heldout = ", ".join(results.get("heldout_languages") or []) or MISSING
    lines.append(f"- **training languages** (MPN): {train}")
    lines.append(f"- **held-out languages** (`{HELDOUT_MARK}`): {heldout}")
    return lines


def _markdown_report(
    results: Mapping[str, Any], png_name: str | None, sections: Sequence[tuple[str, str]] = ()
) -> str:
    parts = [
        "# peft-mpn editing report",
        "## Setup",
        "\n".join(_setup_lines(results)),
        "## Results",
        markdown_table(results, "all").rstrip("\n"),
        '## Cross-lingual GR on translations wrong before the edit ("fixed")',
        markdown_table(results, "fixed").rstrip("\n"),
        *(part for title, text in sections for part in (f"## {title}", text.rstrip("\n"))),
        "## What the figures mean",
        _DEFINITIONS.rstrip("\n"),
    ]
    if png_name:
        parts.append(f"![GR per language, locality and neighbourhood, per method]({png_name})")
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------- JSON
def jsonable(value: Any) -> Any:
    """Strict-JSON data: ``nan``/``inf`` become ``None``, paths strings, tuples and sets lists."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return [jsonable(item) for item in sorted(value, key=str)]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return jsonable(value.item())
    if hasattr(value, "to_dict"):  # EditResult
        return jsonable(value.to_dict())
    return str(value)


# ---------------------------------------------------------------------------------------------------- plot
_KEEP = (("locality", "locality"), ("neighbourhood", "neighbour-\nhood"))


def _bar(ax: Any, x: float, value: float | None, n: Any, width: float, colour: str) -> None:
    """One bar with its n on top; an empty slot says ``n/a`` or ``0`` so it never reads as the other."""
    if value is None or value == 0:
        ax.text(x, 0.01, MISSING if value is None else "0", ha="center", va="bottom", fontsize=7, color=colour)
    if value is not None:
        ax.bar(x, value, width=width, color=colour, zorder=2)
        if isinstance(n, int) and not isinstance(n, bool):
            ax.text(x, value + 0.01, f"{n}", ha="center", va="bottom", fontsize=6.5, rotation=90, color="0.25")


def _figure(results: Mapping[str, Any]) -> Any:
    """Grouped bars per language, one colour per method: GR (all) beside locality and neighbourhood, then GR
    (fixed); held-out languages set apart; the number of inputs each bar counts is written on it."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    methods = _methods(results)
    languages, heldout = _languages(results)
    keep = [
        (key, label) for key, label in _KEEP if any(_get(m, key, "retain_rate") is not None for m in methods.values())
    ]
    gap = 0.6 if heldout and len(heldout) < len(languages) else 0.0
    positions = [i + (gap if lang in heldout else 0.0) for i, lang in enumerate(languages)]
    end = max(positions, default=-1.0)
    keep_positions = [end + 1.6 + i for i in range(len(keep))]
    width = 0.8 / max(len(methods), 1)
    colours = [f"C{i % 10}" for i in range(len(methods))]
    slots = len(languages) + len(keep)

    figure = Figure(figsize=(min(18.0, max(7.0, 1.1 * slots + 3.0)), 7.5), dpi=110, layout="constrained")
    axes = figure.subplots(2, 1, sharex=True)
    panels = [
        ("all", "GR (all): translations right after editing; locality: unrelated predictions kept"),
        ("fixed", "GR (fixed): among translations wrong before editing"),
    ]
    for ax, (key, title) in zip(axes, panels):
        if heldout:
            first = min(p for p, lang in zip(positions, languages) if lang in heldout)
            last = max(p for p, lang in zip(positions, languages) if lang in heldout)
            ax.axvspan(first - 0.5, last + 0.5, color="0.92", zorder=0)
            if gap:
                ax.axvline(first - 0.5 - gap / 2, color="0.4", linestyle="--", linewidth=1)
            ax.text(
                (first + last) / 2,
                1.01,
                "held-out languages",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=9,
                fontstyle="italic",
                color="0.3",
            )
        if keep:
            ax.axvline(end + 0.8, color="0.4", linewidth=1)
        for m, metrics in enumerate(methods.values()):
            offset = (m - (len(methods) - 1) / 2) * width
            for pos, lang in zip(positions, languages):
                entry = _get(metrics, "GR", lang)
                value = _number(_get(entry, key))
                _bar(ax, pos + offset, value, _get(entry, "n_all" if key == "all" else "n_fixed"), width, colours[m])
            if key == "all":
                for pos, (name, _) in zip(keep_positions, keep):
                    value = _number(_get(metrics, name, "retain_rate"))
                    _bar(ax, pos + offset, value, _get(metrics, name, "n"), width, colours[m])
        ax.set_ylim(0.0, 1.08)
        ax.set_xlim(min(positions, default=0) - 0.6, max([*positions, *keep_positions], default=0) + 0.6)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel("share")
        ax.grid(axis="y", color="0.85", zorder=1)
        ax.set_axisbelow(True)
    ticks = [_label(lang, heldout) for lang in languages] + [label for _, label in keep]
    axes[-1].set_xticks([*positions, *keep_positions], ticks)
    axes[-1].set_xlabel(
        (f"Language ({HELDOUT_MARK} = held-out)" if heldout else "Language")
        + "; the small numbers are the inputs each bar counts"
    )
    handles = [Patch(color=colours[m], label=str(name)) for m, name in enumerate(methods)]
    axes[0].legend(handles=handles, title="Method", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    model = _get(results, "setup", "model")
    figure.suptitle("Cross-lingual generalisation and locality" + (f" ({model})" if model else ""))
    return figure


def _atomic_write_png(path: Path, figure: Any) -> Path:
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png"))


# ---------------------------------------------------------------------------------------------------- entry point
def write_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    plot: bool = True,
    json_name: str | None = "results.json",
    sections: Sequence[tuple[str, str]] = (),
) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and ``report.png`` into ``out_dir``, each atomically.

    Args:
        results: ``{"methods": {name: summarize(...)}, "train_languages": [...], "heldout_languages": [...],
            "setup": {...}}``.
        out_dir: The folder (created if needed).
        plot: Also draw ``report.png`` (needs matplotlib, from the ``demo`` extra).
        json_name: File name of the JSON copy of ``results``; ``None`` writes none (``peft-mpn report`` next to the
            file it read, which must stay as it is).
        sections: Extra ``(title, markdown)`` sections of ``report.md``, after the tables (the generation demo's
            greedy generations before and after).

    Returns:
        ``{"json": path, "markdown": path, "png": path}`` (no ``"png"`` with ``plot=False``, no ``"json"`` with
        ``json_name=None``).

    Raises:
        ValueError: If ``results`` has no ``methods`` dict.
        ImportError: If ``plot`` and matplotlib is missing (the JSON and markdown are written first).

    Notes:
        ``nan`` and infinities are written to ``results.json`` as ``null`` (strict JSON); tuples become lists.
    """
    _methods(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md"}
    if json_name is not None:
        paths["json"] = out / json_name
        atomic_write_text(paths["json"], json.dumps(jsonable(results), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(paths["markdown"], _markdown_report(results, "report.png" if plot else None, sections))
    if plot:
        try:
            figure = _figure(results)
        except ImportError as error:
            raise ImportError("report.png needs matplotlib: pip install 'peft-mpn[demo]'.") from error
        paths["png"] = _atomic_write_png(out / "report.png", figure)
    return paths
