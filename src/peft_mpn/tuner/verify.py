"""Verified MPN adapters: a checksum written at save, checked with the rest of the files before anything loads.

``MPNConfig.save_pretrained`` records the SHA-256 of ``adapter_model.safetensors`` in ``adapter_config.json``
(``weights_sha256``). ``import peft_mpn`` routes ``PeftModel.from_pretrained``, ``PeftModel.load_adapter``,
transformers' ``model.load_adapter`` and ``PeftConfig.from_pretrained`` through :func:`check_adapter_dir` for local
directories, which, for an MPN adapter, refuses (naming the file):

- a missing directory, ``adapter_config.json`` or ``adapter_model.safetensors`` (instead of peft's hub lookup);
- a broken ``adapter_config.json``;
- a pickled ``adapter_model.bin`` (only safetensors load: unpickling can run code);
- weights whose checksum differs from the recorded one, or that can't be read (truncated, damaged);
- NaN or infinite values in any tensor;
- a tensor missing or extra with respect to the patch sizes the config records.

Hub repo ids are left to peft. Other PEFT types only get the directory and JSON checks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..utils.checks import non_finite
from ..utils.checksums import sha256_file


logger = logging.getLogger(__name__)
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PREFIX = "base_model.model."


def weights_checksum(directory: str | os.PathLike) -> str | None:
    """The SHA-256 of ``adapter_model.safetensors`` in ``directory``, or ``None`` if there is none."""
    path = Path(directory) / WEIGHTS_NAME
    return sha256_file(path) if path.is_file() else None


def looks_local(name: str | os.PathLike) -> bool:
    """Whether a model or adapter name is a filesystem path rather than a Hub repo id (``"org/name"``)."""
    text = os.fspath(name)
    return (
        os.path.isabs(text)
        or text.startswith((".", "~"))
        or text.count("/") > 1
        or "\\" in text
        or text.endswith("/")
        or os.path.exists(text)
    )


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """``adapter_config.json`` in the adapter directory ``path``, parsed; every failure names the file.

    Raises:
        FileNotFoundError: ``path`` or its ``adapter_config.json`` does not exist.
        ValueError: ``path`` is a file, or the JSON is broken or not an object.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no {CONFIG_NAME} in {str(path)!r}: the adapter directory does not exist; pass the directory that "
            f"save_pretrained wrote ({CONFIG_NAME} and {WEIGHTS_NAME}) or a Hub repo id."
        )
    if not path.is_dir():
        raise ValueError(f"adapter path {str(path)!r} is a file; pass the directory that holds {CONFIG_NAME}.")
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(path)!r}; pass an adapter directory from save_pretrained.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise ValueError(f"{config_file} can't be read as JSON ({exc}); the adapter config is damaged.") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} holds a {type(config).__name__}, not a JSON object; it is damaged.")
    return config


def check_adapter_dir(model_id: str | os.PathLike | None, subfolder: str | None = None, weights: bool = True) -> None:
    """Check a local adapter directory before peft reads it (see the module docstring); Hub ids pass unchecked.

    Args:
        model_id: The adapter directory or a Hub repo id.
        subfolder: The subfolder of ``model_id`` the adapter is in, as peft takes it.
        weights: Also check the weights (not only that the directory and its config are there and readable).

    Raises:
        FileNotFoundError: A file or directory is missing.
        ValueError: A file is damaged, pickled, fails its checksum, holds non-finite values, or lacks or adds
            tensors.
    """
    if model_id is None or not looks_local(model_id):
        return
    path = Path(model_id).expanduser()
    if subfolder:
        path = path / subfolder
    config = read_adapter_config(path)
    if str(config.get("peft_type")) != "MPN" or not weights:
        return
    verify_weights(path, config)


def verify_weights(path: Path, config: dict[str, Any]) -> None:
    """Check ``adapter_model.safetensors`` in ``path`` against ``config`` (the parsed ``adapter_config.json``)."""
    from safetensors.torch import load_file

    file = path / WEIGHTS_NAME
    if not file.is_file():
        if (path / PICKLE_NAME).is_file():
            raise ValueError(
                f"{path / PICKLE_NAME} is a pickled adapter; peft-mpn loads {WEIGHTS_NAME} only, because unpickling "
                "a file can run code. Save the adapter again with save_pretrained() (safetensors is the default) "
                "from a copy you trust."
            )
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {str(path)!r}; the adapter's weights are missing.")
    expected = config.get("weights_sha256")
    if expected:
        digest = sha256_file(file)
        if digest != expected:
            raise ValueError(
                f"{file} does not match the checksum recorded in {path / CONFIG_NAME} (sha256 {digest[:16]}..., "
                f"expected {str(expected)[:16]}...): the file was damaged or changed after it was saved. Save or "
                "copy the adapter again."
            )
    else:
        logger.warning("%s records no weights checksum (saved by an older peft-mpn); %s is not verified", path, file)
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{file} can't be read ({exc}); the file is truncated or damaged.") from exc
    bad = non_finite(tensors.items())
    if bad:
        raise ValueError(
            f"{file} holds NaN or infinite values in {bad}; patches like these would make the model's outputs NaN."
        )
    check_structure(file, tensors, config)


def _role(module: str, config: dict[str, Any]) -> tuple[str | None, str]:
    """``(role, block)`` of a wrapped module name, as ``MPNConfig.role_of``/``block_of`` give them."""
    for role in ("key", "up", "value"):
        names = config.get(f"{role}_modules") or []
        for name in [names] if isinstance(names, str) else names:
            if module == name:
                return role, ""
            if module.endswith("." + name):
                return role, module[: -len(name) - 1]
    return None, module.rpartition(".")[0]


def check_structure(file: Path, tensors: dict[str, Any], config: dict[str, Any]) -> None:
    """``ValueError`` naming ``file`` if a tensor is missing, extra or of the wrong size for the config's patches."""
    modules: dict[str, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        module, marker, field = name.partition(".mpn_patches.")
        if not marker:
            raise ValueError(f"{file} holds {name!r}, not an MPN patch tensor; the file is not this adapter's.")
        modules.setdefault(module.removeprefix(PREFIX), {})[field] = tensor
    patch_sizes = config.get("patch_sizes") or {}
    roles: dict[str, set[str]] = {}
    for module, fields in modules.items():
        role, block = _role(module, config)
        if role is None or block not in patch_sizes:
            raise ValueError(
                f"{file} holds patches for {module!r}, which {CONFIG_NAME} does not describe (its FFN blocks: "
                f"{sorted(patch_sizes)}); the files do not belong together."
            )
        roles.setdefault(block, set()).add(role)
        missing = {"sizes", "num_frozen"} - set(fields)
        if missing:
            raise ValueError(f"{file} lacks {sorted(f'{module}.mpn_patches.{f}' for f in missing)}; it is incomplete.")
        sizes, frozen = [int(s) for s in fields["sizes"].tolist()], int(fields["num_frozen"].reshape(-1)[0])
        if sizes != list(patch_sizes[block]) or not 0 <= frozen <= len(sizes):
            raise ValueError(
                f"{file}: {module} has patches of sizes {sizes} ({frozen} frozen), but {CONFIG_NAME} records "
                f"{patch_sizes[block]}; the files do not belong together."
            )
        has_bias = role != "value"
        trainable = range(len(sizes) - frozen)
        expected = {"sizes", "num_frozen", *(f"weights.{i}" for i in trainable)}
        expected |= {f"biases.{i}" for i in trainable} if has_bias else set()
        optional = {"frozen_weight", "frozen_bias"} if has_bias else {"frozen_weight"}
        if frozen:
            expected |= optional
        lacking, extra = sorted(expected - set(fields)), sorted(set(fields) - expected - optional)
        if lacking or extra:
            what = "; ".join(
                part
                for part in (
                    f"missing {[f'{module}.mpn_patches.{f}' for f in lacking]}" if lacking else "",
                    f"unexpected {[f'{module}.mpn_patches.{f}' for f in extra]}" if extra else "",
                )
                if part
            )
            raise ValueError(f"{file} does not match the patches {CONFIG_NAME} records: {what}.")
        rows = {f"weights.{i}": sizes[frozen + i] for i in trainable}
        if "frozen_weight" in fields:
            rows["frozen_weight"] = sum(sizes[:frozen])
        wrong = [f for f, n in rows.items() if fields[f].shape[0] != n]
        if wrong:
            raise ValueError(f"{file}: {module}.mpn_patches.{wrong[0]} has the wrong number of rows for its patch.")
    needed = {"key", "value"} | ({"up"} if config.get("up_modules") else set())
    for block, sizes in patch_sizes.items():
        lacking = sorted(needed - roles.get(block, set()))
        if sizes and lacking:
            raise ValueError(
                f"{file} lacks the {' and '.join(lacking)} tensors of FFN block {block!r} that {CONFIG_NAME} "
                "records; the file is incomplete."
            )


def install_load_checks() -> None:
    """Route peft's and transformers' adapter loading through :func:`check_adapter_dir`. Idempotent."""
    from peft import PeftConfig, PeftModel
    from transformers.integrations.peft import PeftAdapterMixin

    if getattr(PeftModel.load_adapter, "_peft_mpn", False):
        return

    def wrap(function: Any, locate: Any) -> Any:
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            model_id, subfolder, weights = locate(*args, **kwargs)
            check_adapter_dir(model_id, subfolder, weights)
            return function(*args, **kwargs)

        checked._peft_mpn = True  # type: ignore[attr-defined]
        return checked

    def peft_from_pretrained(cls, model, model_id, *args, **kwargs):
        return model_id, kwargs.get("subfolder"), False  # the weights are checked by load_adapter, which it calls

    def peft_load_adapter(self, model_id, *args, **kwargs):
        return model_id, kwargs.get("subfolder"), True

    def transformers_load_adapter(self, peft_model_id=None, *args, **kwargs):
        subfolder = (kwargs.get("adapter_kwargs") or {}).get("subfolder")
        return peft_model_id, subfolder, kwargs.get("adapter_state_dict") is None

    def config_from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
        return pretrained_model_name_or_path, subfolder, False

    PeftModel.from_pretrained = classmethod(wrap(PeftModel.from_pretrained.__func__, peft_from_pretrained))
    PeftModel.load_adapter = wrap(PeftModel.load_adapter, peft_load_adapter)
    PeftAdapterMixin.load_adapter = wrap(PeftAdapterMixin.load_adapter, transformers_load_adapter)
    PeftConfig.from_pretrained = classmethod(wrap(PeftConfig.from_pretrained.__func__, config_from_pretrained))


__all__ = [
    "check_adapter_dir",
    "check_structure",
    "install_load_checks",
    "looks_local",
    "read_adapter_config",
    "verify_weights",
    "weights_checksum",
]
