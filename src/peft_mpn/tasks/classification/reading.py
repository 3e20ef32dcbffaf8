"""How a classifier reads its last layer, and where a patch must be read so that it never fires unseen.

A patch neuron in the last FFN changes the last hidden state only at the tokens where it fires. The head sees those
changes only at the tokens it pools: the first token ([CLS]) for a BERT-style head, every token for a mean-pooled
head. The patch's training must therefore look at the same tokens as the head:

- [CLS] pooling: ``position="cls"``. The patch may fire at other tokens, but nothing reads them.
- mean pooling: ``position="all"``. Trained at [CLS] only, a patch stays silent there but fires at the other tokens
  on unrelated inputs, and the mean carries that to the head: measured on e5-small, English locality fell to 0.48.

:func:`pooling_of` finds the pooling from the saved classifier (``MeanPoolingClassifier`` keeps it in
``config.pooling``), and :func:`read_position` turns it into the position, or refuses a mismatch with the fix.
"""

from __future__ import annotations

from typing import Any

from torch import nn


__all__ = ["pooling_of", "read_position"]

# Sequence classifiers of these model types read the first token ([CLS] / <s>).
_FIRST_TOKEN_TYPES = ("bert", "xlm-roberta", "roberta", "camembert", "electra", "distilbert", "deberta", "deberta-v2")


def pooling_of(model: nn.Module) -> str | None:
    """How ``model`` (or the model inside a PEFT wrapper) pools its last hidden states for the head.

    Args:
        model: A sequence classifier.

    Returns:
        ``"mean"`` or ``"cls"`` for peft_mpn's ``MeanPoolingClassifier`` (its ``config.pooling``, ``"mean"`` when
        unset), ``"cls"`` for BERT-style ``*ForSequenceClassification`` models, ``None`` when unknown.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if hasattr(base, "classify_hidden"):
        return str(getattr(config, "pooling", None) or "mean")
    if type(base).__name__.endswith("ForSequenceClassification") and getattr(config, "model_type", None) in (
        _FIRST_TOKEN_TYPES
    ):
        return "cls"
    return None


def read_position(model: nn.Module, position: str | None = None) -> str:
    """The position a patch of ``model`` must be trained and read at: the one that matches its pooling.

    Args:
        model: The classifier being edited.
        position: The position asked for (``EditConfig.position``), or ``None`` to take it from the model.

    Returns:
        ``"all"`` for a mean-pooled classifier, ``"cls"`` for a [CLS]-pooled one (or an unknown one), unless
        ``position`` is given and safe.

    Raises:
        ValueError: ``position="cls"`` on a mean-pooled classifier, where the patch would fire unseen on the tokens
            the mean reads. The message names the fix.
    """
    pooling = pooling_of(model)
    if position is None:
        return "all" if pooling == "mean" else "cls"
    if position not in ("cls", "all"):
        raise ValueError(f"EditConfig.position must be 'cls' or 'all', not {position!r}.")
    if pooling == "mean" and position == "cls":
        raise ValueError(
            "the classifier mean-pools its last layer, but EditConfig.position='cls' trains each patch at [CLS] "
            "only: it would fire unseen on the other tokens and change unrelated predictions. Use "
            "EditConfig(position='all') (or leave config out: MPNEditor then picks the position from the model), "
            "or train the base with [CLS] pooling (peft-mpn train-base --pooling cls)."
        )
    return position


def describe(model: nn.Module) -> dict[str, Any]:
    """``{"pooling": ..., "position": ...}`` of a classifier, for logs and adapter configs."""
    return {"pooling": pooling_of(model), "position": read_position(model)}
