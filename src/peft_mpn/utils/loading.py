"""Loading models quietly and reproducibly: a seeded new head, and no report for the weights we know are new.

transformers prints a "LOAD REPORT" table and a progress bar whenever weights are missing from a checkpoint. For
the offline default model that is always the classification head (and BERT's pooler), which peft-mpn adds on
purpose, so the table only alarms users. :func:`quiet_new_head` hides it when, and only when, every missing weight
is one of the expected head weights; any other missing, unexpected or mismatched weight is still reported.
:func:`seeded` makes such a new head the same on every call.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence


__all__ = ["HEAD_PREFIXES", "KNOWN_WARNINGS", "quiet_known_warnings", "quiet_new_head", "seeded"]

#: Deprecation warnings raised inside peft/transformers on paths peft-mpn uses, that a user cannot act on:
#: (category, start of the message). peft 0.21 asks transformers 5 for ``is_gradient_checkpointing``.
KNOWN_WARNINGS = ((FutureWarning, "`is_gradient_checkpointing` is deprecated"),)

#: Weights a new sequence-classification head brings (BERT's pooler, the classifier, decoder heads' ``score``).
HEAD_PREFIXES = ("classifier.", "bert.pooler.", "roberta.pooler.", "pooler.", "score.", "pre_classifier.")
_LOGGER = "transformers.modeling_utils"
_ROW = re.compile(r"^\s*([\w.\-]+)\s*\|\s*(?:\x1b\[[0-9;]*m)?([A-Z_]+)")


class _ExpectedHeadFilter(logging.Filter):
    """Drops a load report whose rows are all MISSING weights under ``prefixes``."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [m.groups() for m in map(_ROW.match, message.splitlines()) if m and m.group(1) != "Key"]
        expected = rows and all(status == "MISSING" and key.startswith(self.prefixes) for key, status in rows)
        return not expected


@contextlib.contextmanager
def quiet_new_head(prefixes: Sequence[str] = HEAD_PREFIXES) -> Iterator[None]:
    """Within the block, hide transformers' weight-loading bar and its report of a newly initialised head only."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger(_LOGGER)
    head_filter = _ExpectedHeadFilter(prefixes)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    logger.addFilter(head_filter)
    try:
        yield
    finally:
        logger.removeFilter(head_filter)
        if bar:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_known_warnings() -> Iterator[None]:
    """Within the block, hide the :data:`KNOWN_WARNINGS` (exactly those messages); every other warning shows."""
    import warnings

    with warnings.catch_warnings():
        for category, message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(message), category=category)
        yield


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded (``None``: unseeded), restoring the global RNG afterwards."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
