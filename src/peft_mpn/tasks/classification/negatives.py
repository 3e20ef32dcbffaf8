"""Hard negatives mined for edit records: the memory texts nearest to each edit at the patched layer.

A patch trained against a memory of unrelated texts learns "not those", and still fires on texts close to the edit
(same template, same subject with another value). Hard negatives are such close texts that the patch must stay
silent on; they join the memory for their edit only. Records built by ``peft-mpn build-benchmark`` carry them
(same country and relation with values of training countries). For a user's own records, :func:`mine_negatives`
finds them in a pool of the user's training texts: for each edit input, the ``k`` pool texts whose FFN input at
the patched layer (read where the patch is read, centred by the pool mean) has the highest cosine with it.

Example:
    >>> records = mine_negatives(model, tokenizer, records, pool=train_texts, k=3)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...data.records import EditRecord
from ...editing.baselines import locate_ffn
from ...editing.fastpath import capture_inputs
from ...utils.checks import is_int
from .reading import read_position


__all__ = ["mine_negatives"]


@torch.no_grad()
def _vectors(
    model: nn.Module, key_module: nn.Module, tokenizer: Any, texts: Sequence[str], position: str, max_length: int
) -> torch.Tensor:
    """One read vector per text at the patched FFN's input: [CLS], or the mean over real tokens."""
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(texts), 128):
        batch = tokenizer(
            list(texts[start : start + 128]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        cached = capture_inputs(model, key_module, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        if position == "cls":
            rows.append(cached.hidden[:, 0].float())
        else:
            mask = cached.mask.unsqueeze(-1).to(cached.hidden.dtype)
            rows.append(((cached.hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).float())
    return torch.cat(rows)


def mine_negatives(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[EditRecord | dict[str, Any]],
    pool: Sequence[str],
    k: int = 3,
    *,
    languages: Sequence[str] | None = None,
    position: str | None = None,
    keep_existing: bool = True,
    max_length: int = 128,
) -> list[EditRecord]:
    """Give each record ``k`` hard negatives per language: the pool texts nearest to its input at the patched layer.

    Args:
        model: The classifier to be edited (a ``PeftModel`` with an MPN adapter or a plain classifier).
        tokenizer: Its tokenizer.
        records: Edit records (or dicts of them).
        pool: Candidate texts, e.g. the base's training texts. Never put evaluation items here.
        k: Negatives per record and language (0 returns the records unchanged).
        languages: Languages to mine for (default: every language of each record's inputs).
        position: Where the patch is read (default: from the model's pooling, see ``reading.read_position``).
        keep_existing: Leave the negatives a record already carries for a language and mine only where it has none.
        max_length: Token limit per text.

    Returns:
        New records (the inputs are not modified), with ``negatives[lang]`` filled in. A pool text equal to one of
        the record's own inputs, rephrases or neighbours is never chosen.

    Raises:
        ValueError: ``k`` is not an int >= 0, or ``pool`` is empty while ``k > 0``.
    """
    if not is_int(k, 0):
        raise ValueError(f"mine_negatives: k must be an int >= 0 (negatives per record and language), got {k!r}.")
    records = [r if isinstance(r, EditRecord) else EditRecord.from_dict(r) for r in records]
    if k == 0 or not records:
        return [EditRecord.from_dict(r.to_dict()) for r in records]
    pool = list(dict.fromkeys(t for t in pool if isinstance(t, str) and t))
    if not pool:
        raise ValueError("mine_negatives: the pool is empty; pass the base's training texts (or k=0 for none).")
    wanted = []  # (record index, language, text): where a record has no negatives of its own
    for i, record in enumerate(records):
        for lang in languages or record.languages:
            if lang in record.inputs and not (keep_existing and record.negatives.get(lang)):
                wanted.append((i, lang, record.inputs[lang]))
    if not wanted:
        return [EditRecord.from_dict(r.to_dict()) for r in records]
    position = read_position(model, position)
    _, modules = locate_ffn(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    key_module = base.get_submodule(modules["key"])
    was_training = model.training
    model.eval()
    try:
        pool_vectors = _vectors(model, key_module, tokenizer, pool, position, max_length)
        centre = pool_vectors.mean(0)
        pool_unit = nn.functional.normalize(pool_vectors - centre, dim=-1)
        queries = _vectors(model, key_module, tokenizer, [t for _, _, t in wanted], position, max_length)
        queries = nn.functional.normalize(queries - centre, dim=-1)
        top = min(len(pool), 4 * k + 16)  # room for skipping a record's own texts
        order = torch.cat([(q @ pool_unit.T).topk(top, dim=-1).indices for q in queries.split(1024)])
    finally:
        model.train(was_training)
    out = [EditRecord.from_dict(r.to_dict()) for r in records]
    for (i, lang, _), ranked in zip(wanted, order.tolist()):
        record = out[i]
        own = set(record.inputs.values()) | {t for texts in record.rephrases.values() for t in texts}
        own |= {t for n in record.neighbours for t in n.get("inputs", {}).values()}
        chosen = []
        for j in ranked:
            if pool[j] not in own:
                chosen.append(pool[j])
                if len(chosen) == k:
                    break
        record.negatives[lang] = chosen
    return out
