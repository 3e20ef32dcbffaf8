"""`EditCollator`: what every task's collator shares: training languages, per-step sampling, the memory.

A task's collator (``peft_mpn.tasks.classification.collator.MultilingualEditCollator``,
``peft_mpn.tasks.generation.collator.GenerationEditCollator``) subclasses it and adds ``build``: one edit record
and one step -> the tensors of that step.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch

from ..data.aliases import check_code_switch, code_switch_language, switched_copies
from ..utils.checks import is_int


if TYPE_CHECKING:
    from .losses import EditConfig

Sampling = Literal["all", "random_k", "weighted"]
CollatorT = TypeVar("CollatorT", bound="EditCollator")


def training_languages(languages: Sequence[str], *, english_only: bool = False) -> list[str]:
    """The training languages: English first, then the others in order, without repeats.

    Args:
        languages: Language codes.
        english_only: English alone (Transformer-Patcher).

    Raises:
        TypeError: If ``languages`` is one string rather than a list of codes.

    Example:
        >>> training_languages(["fr", "en", "de", "fr"])
        ['en', 'fr', 'de']
    """
    if isinstance(languages, str):
        raise TypeError(f"languages must be a list of codes like ['en', 'fr'], not the string {languages!r}.")
    return ["en"] if english_only else list(dict.fromkeys(["en", *languages]))


class EditCollator(ABC):
    """The languages, memory and per-step sampling of an edit's training batches (see the task subclasses).

    Args:
        tokenizer: A Hugging Face tokenizer.
        languages: Training languages; English is always included.
        memory: Unrelated texts for the memory loss.
        sampling: ``"all"`` non-English training languages every step, ``"random_k"`` k of them at random, or
            ``"weighted"`` k of them drawn by ``weights``.
        k: Languages per step for ``"random_k"`` and ``"weighted"``.
        weights: Language -> sampling weight for ``"weighted"``.
        edit_repeat: Copies of the English example per batch.
        memory_batch_size: Memory examples per step; ``None`` takes the whole memory.
        max_length: Token limit per text.
        seed: Seeds the per-step sampling (step ``s`` always draws the same languages and memory).
    """

    def __init__(
        self,
        tokenizer: Any,
        languages: Sequence[str] = ("en",),
        memory: Sequence[str] | None = None,
        *,
        sampling: Sampling = "all",
        k: int | None = None,
        weights: dict[str, float] | None = None,
        edit_repeat: int = 8,
        memory_batch_size: int | None = None,
        max_length: int = 128,
        seed: int = 0,
    ) -> None:
        languages = training_languages(languages)
        if sampling not in ("all", "random_k", "weighted"):
            raise ValueError(f"sampling must be 'all', 'random_k' or 'weighted', not {sampling!r}.")
        others = [lang for lang in languages if lang != "en"]
        if sampling != "all" and (k is None or not 1 <= k <= max(len(others), 1)):
            raise ValueError(f"sampling={sampling!r} needs k between 1 and {len(others)} (the non-English languages).")
        bad_weights = not weights or bool(set(weights) - set(others)) or any(w < 0 for w in weights.values())
        if sampling == "weighted" and bad_weights:
            raise ValueError(f"sampling='weighted' needs weights={{language: weight >= 0}} over {others}.")
        if not is_int(edit_repeat, least=1):
            raise ValueError(f"edit_repeat must be an int >= 1, got {edit_repeat!r}.")
        if memory_batch_size is not None and not is_int(memory_batch_size, least=1):
            raise ValueError(
                f"memory_batch_size must be an int >= 1 (memory examples per step) or None, got {memory_batch_size!r}."
            )
        if not is_int(max_length, least=1):
            raise ValueError(f"max_length must be an int >= 1 (tokens per text), got {max_length!r}.")
        if isinstance(memory, (str, bytes)):
            raise TypeError("memory must be a list of texts, not one string; wrap it: memory=[text].")
        memory = list(memory or [])
        bad = next((i for i, text in enumerate(memory) if not isinstance(text, str)), None)
        if bad is not None:
            raise TypeError(f"memory[{bad}] must be a string (a text), got {memory[bad]!r}.")
        self.tokenizer = tokenizer
        self.languages = languages
        self.memory = memory
        self.sampling = sampling
        self.k = k
        self.weights = weights or {}
        self.edit_repeat = edit_repeat
        self.memory_batch_size = memory_batch_size
        self.max_length = max_length
        self.seed = seed
        self.code_switch: list[str] = []  # see add_code_switch
        self.aliases: dict[str, dict[str, str]] | None = None
        self.code_switch_memory = True

    def add_code_switch(
        self, aliases: Mapping[str, Mapping[str, str]] | None, code_switch: Sequence[str], memory: bool = True
    ) -> None:
        """Set up code-switched training examples (called by a task's constructor after this one's).

        Each language ``lang`` of ``code_switch`` adds the pseudo-language ``"en>lang"`` (the English example with its
        entity names of ``aliases`` written in ``lang``) to the training languages, after the real ones; with
        ``memory``, a code-switched copy of each memory text that names an entity joins the memory (the languages
        taken in turn). Sets ``aliases``, ``code_switch`` and ``code_switch_memory``.
        """
        self.code_switch, self.aliases = check_code_switch(code_switch, aliases)
        self.code_switch_memory = bool(memory)
        self.languages = [*self.languages, *(code_switch_language(lang) for lang in self.code_switch)]
        if self.code_switch and self.code_switch_memory:
            self.memory.extend(switched_copies(self.memory, self.aliases, self.code_switch))

    @classmethod
    def for_edits(
        cls: type[CollatorT],
        tokenizer: Any,
        languages: Sequence[str],
        memory: Sequence[str] | None,
        config: EditConfig,
        **options: Any,
    ) -> CollatorT:
        """The collator of an editor: ``edit_repeat``, ``memory_batch_size`` and ``seed`` come from ``config``.

        Args:
            tokenizer, languages, memory: As for the constructor.
            config: The editor's `EditConfig`.
            **options: The other constructor arguments (``sampling``, ``k``, ``weights``, ``max_length``...).
        """
        knobs = {"edit_repeat": config.edit_repeat, "memory_batch_size": config.memory_batch_size, "seed": config.seed}
        return cls(tokenizer, languages, memory, **knobs, **options)

    # ------------------------------------------------------------------ selection (shared with the fast path)
    record_field = "inputs"  # the record's {language: text} field that must hold every training language
    translations = "the translations"  # what to add when it does not, for the error

    def check(self, record: Any) -> None:
        """Raise if ``record`` lacks a text in a training language."""
        missing = [lang for lang in self.languages if lang not in getattr(record, self.record_field)]
        if missing:
            raise ValueError(
                f"edit record {record.id!r}: field {self.record_field!r} has no text in training languages {missing}; "
                f"add {self.translations} or leave those languages out of `languages`."
            )

    def step_languages(self, step: int) -> list[str]:
        """The languages of step ``step``: English ``edit_repeat`` times, then the sampled others."""
        others = [lang for lang in self.languages if lang != "en"]
        if self.sampling == "random_k":
            others = sorted(random.Random(self.seed * 1_000_003 + step).sample(others, self.k), key=others.index)
        elif self.sampling == "weighted":
            rng = random.Random(self.seed * 1_000_003 + step)
            pool, chosen = {lang: self.weights.get(lang, 0.0) for lang in others}, []
            for _ in range(self.k):
                total = sum(pool.values())
                if total <= 0:
                    break
                pick = rng.choices(list(pool), weights=list(pool.values()))[0]
                chosen.append(pick)
                pool.pop(pick)
            others = sorted(chosen, key=others.index)
        return ["en"] * self.edit_repeat + others

    def memory_indices(self, step: int, size: int | None = None) -> list[int]:
        """Indices of the memory examples of step ``step`` (all of them when ``memory_batch_size`` is None)."""
        size = len(self.memory) if size is None else size
        if self.memory_batch_size is None or self.memory_batch_size >= size:
            return list(range(size))
        return sorted(random.Random(self.seed * 7_919 + step).sample(range(size), self.memory_batch_size))

    # ------------------------------------------------------------------ tensors
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise texts into padded ``input_ids`` and ``attention_mask``."""
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    @abstractmethod
    def build(self, record: Any, step: int = 0) -> dict[str, Any]:
        """The batch of step ``step`` for ``record``: each task defines its tensors."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Collate for ``transformers.Trainer``: features are ``[{"record": record or dict, "step": int}]``."""
        if len(features) != 1:
            raise ValueError(
                f"{type(self).__name__} builds one edit per batch, got {len(features)} features; set "
                "per_device_train_batch_size=1 (one step = one edit batch)."
            )
        feature = features[0]
        return self.build(feature["record"], int(feature.get("step", 0)))
