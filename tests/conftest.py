"""Shared fixtures: tiny random transformers models built from configs (no downloads)."""

from __future__ import annotations

import os
from collections.abc import Callable


# Before torch loads OpenMP: with its default busy-waiting, every small op on a 2-core machine costs ~8 ms.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

import peft_mpn  # noqa: E402,F401  (registers the MPN PEFT type)


VOCAB = 100
_GATED = dict(  # tiny LLaMA-style decoders with a gated MLP
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
)
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
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**_GATED)),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**_GATED)),
    "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**_GATED)),
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


# ---------------------------------------------------------------------- a tiny trained classifier
WORDS = [f"w{i}" for i in range(40)]
LANGS = ("en", "fr", "de")


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = specials + [f"{w}{'' if lang == 'en' else '_' + lang}" for lang in LANGS for w in [*WORDS, "good"]]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def translate(text: str, lang: str) -> str:
    """The synthetic 'translation' of a text: every word gets a language suffix."""
    return text if lang == "en" else " ".join(f"{w}_{lang}" for w in text.split())


def synthetic_texts(n: int, seed: int) -> list[tuple[str, int]]:
    """Texts of 6 random words; label 1 iff the word 'good' appears."""
    rng = __import__("random").Random(seed)
    out = []
    for _ in range(n):
        words = rng.choices(WORDS, k=6)
        label = rng.random() < 0.5
        if label:
            words[rng.randrange(6)] = "good"
        out.append((" ".join(words), int(label)))
    return out


@pytest.fixture(scope="session")
def trained_classifier_state():
    """A tiny BERT classifier trained for a few steps on the synthetic task in three 'languages'."""
    return train_tiny_classifier()


def train_tiny_classifier():
    """Train the tiny classifier of :func:`trained_classifier_state`; returns (state dict, config, tokenizer)."""
    tokenizer = _word_tokenizer()
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        # A larger init than BERT's 0.02 keeps the [CLS] state of such a tiny model text-specific (at 0.02 it
        # collapses to one vector per class, and no patch could single out one input).
        initializer_range=0.5,
    )
    model = tf.BertForSequenceClassification(config)
    with torch.no_grad():  # 'translations' start near their English words, as in a multilingual model
        for head in (model.bert.pooler.dense, model.classifier):  # an unsaturated head, at BERT's usual init
            head.weight.normal_(0.0, 0.02)
            head.bias.zero_()
        emb = model.bert.embeddings.word_embeddings.weight
        vocab = tokenizer.get_vocab()
        for word in [*WORDS, "good"]:
            for lang in LANGS[1:]:
                emb[vocab[f"{word}_{lang}"]] = emb[vocab[word]] + 0.3 * torch.randn_like(emb[vocab[word]])
    data = [(translate(t, lang), y) for t, y in synthetic_texts(600, seed=1) for lang in LANGS]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(150):
        idx = torch.randint(0, len(data), (32,), generator=generator).tolist()
        batch = tokenizer([data[i][0] for i in idx], padding=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([data[i][1] for i in idx])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return {k: v.clone() for k, v in model.state_dict().items()}, config, tokenizer


@pytest.fixture
def classifier(trained_classifier_state):
    """Factory: ``classifier()`` gives a fresh copy of the trained tiny classifier and its tokenizer."""
    state, config, tokenizer = trained_classifier_state

    def fresh():
        model = tf.BertForSequenceClassification(config)
        model.load_state_dict(state)
        return model.eval(), tokenizer

    return fresh


# ---------------------------------------------------------------------- tiny causal LMs for generation edits
_TINY["bloom"] = lambda: tf.BloomForCausalLM(tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=2))

LM_WORDS = [f"v{i}" for i in range(48)]  # prompt words, 'translated' with a language suffix
LM_ENTITIES = [f"E{i}" for i in range(16)]  # names: the same token in every language, like "Lyon"
LM_LANGS = ("en", "fr", "de")
LM_ARCHS = ("gpt2", "llama", "qwen2", "mistral", "bloom", "gemma", "gemma2", "gemma3_text", "olmo2")


def lm_word_tokenizer(bos: bool = True):
    """A word-level tokenizer over the prompt words in three 'languages' and the entity names.

    With ``bos`` it prepends ``<s>`` as LLaMA's tokenizer does; without, it adds nothing, as GPT-2's and Qwen2's do.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    words = [w if lang == "en" else f"{w}_{lang}" for lang in LM_LANGS for w in LM_WORDS]
    vocab = specials + words + LM_ENTITIES
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def lm_translate(text: str, lang: str) -> str:
    """The synthetic translation of a prompt: every word but the entity names gets a language suffix."""
    if lang == "en":
        return text
    return " ".join(w if w in LM_ENTITIES else f"{w}_{lang}" for w in text.split())


def make_tiny_lm(arch: str, vocab_size: int, seed: int = 0, layers: int = 2) -> torch.nn.Module:
    """A tiny random causal LM (``layers`` layers, width 64) whose 'translated' words start near their English ones.

    With 3 or more layers, Gemma 2 and 3 alternate sliding-window (window 3) and global attention layers.

    The initialiser range is 0.3 rather than the usual 0.02: at 0.02 a random 2-layer model has nearly flat
    next-token logits and nearly identical hidden states, so any change flips its argmax and no patch could single
    out one context. At 0.3 its states are context-specific, as a trained model's are.
    """
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, initializer_range=0.3, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    gated = dict(
        common,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    windows = (
        dict(sliding_window=3, layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(layers)])
        if layers > 2
        else {}
    )
    configs = {
        "gpt2": lambda: tf.GPT2LMHeadModel(
            tf.GPT2Config(n_embd=64, n_layer=layers, n_head=4, n_positions=64, **common)
        ),
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**gated)),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**gated)),
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**gated)),
        "bloom": lambda: tf.BloomForCausalLM(tf.BloomConfig(hidden_size=64, n_layer=layers, n_head=4, **common)),
        "gemma": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**gated, head_dim=16)),
        # Gemma 2 and 3 and OLMo 2 normalise the MLP output before the residual add; Gemma 2 soft-caps its logits.
        "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**gated, head_dim=16, **windows)),
        "gemma3_text": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**gated, head_dim=16, **windows)),
        "olmo2": lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(**gated)),
    }
    model = configs[arch]()
    if arch in ("gemma2", "gemma3_text"):
        # Gemma's norms scale by (1 + weight), and the weights start at 0. Trained models have large gains after the
        # MLP (Gemma 3 270M, last layer: 324 on average, so its normalised MLP output is a fifth of the residual
        # stream); at gain 1 a last-layer patch can barely turn this tiny model's residual stream: no edit succeeds.
        with torch.no_grad():
            for layer in model.model.layers:
                layer.post_feedforward_layernorm.weight.fill_(2.0)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for i in range(len(LM_WORDS)):
            for k in range(1, len(LM_LANGS)):
                row = 4 + k * len(LM_WORDS) + i  # the layout of lm_word_tokenizer's vocabulary
                emb[row] = emb[4 + i] + 0.3 * emb[4 + i].std() * torch.randn_like(emb[4 + i])
    return model.eval()


def lm_sentences(n: int, seed: int, low: int = 4, high: int = 8) -> list[str]:
    """``n`` random English prompts of ``low`` to ``high`` words."""
    rng = __import__("random").Random(seed)
    return [" ".join(rng.choices(LM_WORDS, k=rng.randint(low, high))) for _ in range(n)]


def lm_edit_records(n: int, seed: int, languages=LM_LANGS, target_words: int = 2) -> list[dict]:
    """``n`` generation edits: a random 5-word prompt, translated, and a new answer of entity names."""
    rng = __import__("random").Random(seed)
    records = []
    for i in range(n):
        prompt = " ".join(rng.choices(LM_WORDS, k=5))
        target = " " + " ".join(rng.choices(LM_ENTITIES, k=target_words))
        records.append(
            {
                "id": f"edit-{seed}-{i}",
                "prompt": {lang: lm_translate(prompt, lang) for lang in languages},
                "target": {lang: target for lang in languages},
            }
        )
    return records


@pytest.fixture(scope="session")
def lm_tokenizer():
    """The word-level tokenizer of the tiny causal LMs (with a BOS token)."""
    return lm_word_tokenizer()
