"""Shared fixtures: tiny random transformers models built from configs (no downloads)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
import transformers as tf


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import peft_mpn  # noqa: E402,F401  (registers the MPN PEFT type)


VOCAB = 100
_TINY: dict[str, Callable[[], torch.nn.Module]] = {
    "bert": lambda: tf.BertForSequenceClassification(
        tf.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ),
    "xlm-roberta": lambda: tf.XLMRobertaForSequenceClassification(
        tf.XLMRobertaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ),
    "distilbert": lambda: tf.DistilBertForSequenceClassification(
        tf.DistilBertConfig(vocab_size=VOCAB, dim=32, hidden_dim=64, n_layers=2, n_heads=2)
    ),
    "gpt2": lambda: tf.GPT2LMHeadModel(
        tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    ),
    "llama": lambda: tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ),
    "qwen2": lambda: tf.Qwen2ForCausalLM(
        tf.Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ),
    "mistral": lambda: tf.MistralForCausalLM(
        tf.MistralConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ),
}
ARCHS = ["bert", "xlm-roberta", "distilbert", "gpt2", "llama", "qwen2"]


def make_tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of ``arch`` in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return _TINY[arch]().eval()


def model_output(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a classifier or LM for ``ids``, without gradients."""
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def tiny() -> Callable[..., torch.nn.Module]:
    """Factory fixture: ``tiny("bert", seed=0)``."""
    return make_tiny


@pytest.fixture
def ids() -> torch.Tensor:
    """A fixed batch of token ids (3 sequences of 7 tokens, none of them padding)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (3, 7), generator=generator)
