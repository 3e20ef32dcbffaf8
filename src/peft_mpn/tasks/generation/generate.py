"""Running a causal LM for generation edits: teacher-forced predictions, greedy generation, base continuations.

These helpers take token ids (see `GenerationEditCollator.encode`) and any Hugging Face causal LM, plain or wrapped
in a ``PeftModel``. They run in eval mode without gradients and leave the model's mode as they found it.

Example:
    >>> encoded = collator.encode("The capital of France is", " Lyon")  # doctest: +SKIP
    >>> greedy_generate(model, [encoded.prompt_ids], max_new_tokens=len(encoded.target_ids))  # doctest: +SKIP
    [[34]]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .collator import EncodedEdit, pad_right


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no gradients inside the block; the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def teacher_forced_predictions(
    model: nn.Module, edits: Sequence[EncodedEdit], pad_id: int = 0, batch_size: int = 32
) -> list[list[int]]:
    """The model's argmax token at every target position, given the true earlier target tokens.

    Returns:
        One list per edit, as long as its target: the token the model predicts in place of each target token.
    """
    return [ids for ids, _ in teacher_forced_scores(model, edits, pad_id, batch_size)]


def teacher_forced_scores(
    model: nn.Module, edits: Sequence[EncodedEdit], pad_id: int = 0, batch_size: int = 32
) -> list[tuple[list[int], float]]:
    """Per edit, the argmax tokens at the target positions (as :func:`teacher_forced_predictions`) and the
    log-probability of the whole target under teacher forcing (the sum over its tokens)."""
    device = model_device(model)
    scores: list[tuple[list[int], float]] = []
    with evaluating(model):
        for start in range(0, len(edits), batch_size):
            chunk = edits[start : start + batch_size]
            ids, mask = pad_right([e.ids for e in chunk], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, edit in enumerate(chunk):
                positions = torch.tensor(edit.target_positions, device=logits.device)
                at = logits[row, positions].float()
                target = torch.tensor(edit.target_ids, device=at.device)
                log_prob = torch.log_softmax(at, -1).gather(1, target.unsqueeze(1)).sum()
                scores.append((at.argmax(-1).tolist(), float(log_prob)))
    return scores


def greedy_generate(
    model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_token_id: int | None = None
) -> list[list[int]]:
    """Greedy decoding with the KV cache, one prompt at a time: the argmax token, ``max_new_tokens`` times.

    Args:
        model: A causal LM (plain or a ``PeftModel``).
        prompts: Token ids of each prompt (with BOS where the model expects one).
        max_new_tokens: Tokens to generate per prompt.
        eos_token_id: Stop a prompt's generation after this token (``None``: always generate ``max_new_tokens``).

    Returns:
        The generated ids per prompt (without the prompt).
    """
    if max_new_tokens < 0:
        raise ValueError(f"greedy_generate: max_new_tokens must be >= 0, got {max_new_tokens}.")
    device = model_device(model)
    outputs: list[list[int]] = []
    with evaluating(model):
        for prompt in prompts:
            if not prompt:
                raise ValueError("greedy_generate: a prompt has no tokens; a causal LM needs at least one (e.g. BOS).")
            generated: list[int] = []
            ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
            mask = torch.ones_like(ids)
            past = None
            for _ in range(max_new_tokens):
                out = model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = int(out.logits[0, -1].argmax())
                generated.append(token)
                if eos_token_id is not None and token == eos_token_id:
                    break
                ids = torch.tensor([[token]], dtype=torch.long, device=device)
                mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
            outputs.append(generated)
    return outputs


def batched_greedy(
    model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int = 0, batch_size: int = 32
) -> list[list[int]]:
    """Greedy decoding of many prompts at once, without a KV cache: one batched forward pass per new token.

    For short continuations of many prompts this is much faster than :func:`greedy_generate` (one prompt and one
    token per call), and it gives the same tokens: each step takes the argmax after the prompt and the tokens
    generated so far, right-padded, under the causal mask.
    """
    if max_new_tokens < 0:
        raise ValueError(f"batched_greedy: max_new_tokens must be >= 0, got {max_new_tokens}.")
    generated: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        steps = [EncodedEdit(list(p) + g, [pad_id]) for p, g in zip(prompts, generated)]
        for g, (ids, _) in zip(generated, teacher_forced_scores(model, steps, pad_id, batch_size)):
            g.append(ids[0])
    return generated


@contextlib.contextmanager
def base_model_of(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its adapters disabled (a ``PeftModel``), or the model itself."""
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        with model.disable_adapter():
            yield model
    else:
        yield model
