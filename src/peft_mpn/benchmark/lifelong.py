"""The lifelong-editing curve: one stream of edits, measured after 1, 10, 100, 1,000, ... records.

For each method (T-Patcher, MPN, GRACE, FT-L, LoRA) the same records are edited in one stream, each on top of the
earlier ones, and at every point of ``points`` the edited model is measured on:

- **ER**: the English inputs of every record edited so far, predicted as their label;
- **GR train / GR held-out**: their translations in the non-English training languages and in the held-out
  languages, predicted as the label (and **GR held-out fixed**: among translations the original model got wrong);
- **locality**: unrelated claims (never edited, never in the memory) whose prediction equals the **original**
  model's (not the previous point's);
- **neighbourhood**: other claims about the countries edited so far (the first ``neighbours`` of each record, in
  every language, left out while they are themselves edited so far), whose prediction equals the original's;
- **seconds per edit** over the edits since the previous point, and **inference overhead**: a full forward pass of
  the edited model on a fixed batch against the original model, median ratio over interleaved rounds.

Data (``split="test"``, the reported curve): edits are claims (capital, continent, currency, language) about test
countries, then training countries, ordered round-robin over countries so that a prefix spans many countries; each
is labelled with the truth when the base classifier gets it wrong and with the flipped label otherwise
(counterfactual edits: the benchmark has fewer wrong claims than edits). The memory holds claims about training
countries that no edit touches; locality uses validation countries. ``split="validation"`` is the tuning run: edits
about validation countries (then, for streams longer than the 200 validation claims, about a second quarter of the
training countries, which then leave the memory), locality on claims about a quarter of the training countries kept
out of the memory; the test split is not touched. Every evaluation reads the [CLS] FFN input of the edited layer,
cached once from the original model (below that layer every method leaves the model unchanged), and is checked
against full forward passes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.records import EditRecord
from ..editing.baselines import BaselineConfig
from ..editing.fastpath import CachedInputs
from ..editing.grace import GraceConfig
from ..editing.losses import EditConfig
from ..tasks.classification.editor import MPNEditor
from ..tuner.config import MPNConfig
from ..utils.io import atomic_write_text


LABELS = {"tpatcher": "T-Patcher", "mpn": "MPN", "grace": "GRACE", "ft": "FT-L", "lora": "LoRA"}


@dataclass
class LifelongConfig:
    """What the lifelong curve runs.

    Args:
        methods: Any of ``tpatcher``, ``mpn``, ``grace``, ``ft``, ``lora``.
        points: Numbers of records after which the model is measured; the stream edits ``max(points)`` records.
        train_languages: MPN's training languages (English first); the other methods edit in English (FT-L and
            LoRA train on the same languages as MPN, as in the demo).
        heldout_languages: Languages no method trains on.
        relations: Relations of the edited claims.
        split: ``"test"`` (the reported curve) or ``"validation"`` (hyperparameter search; never touches test).
        memory_size: Memory texts (claims about training countries no edit touches).
        n_negatives: Hard negatives per edit and language (the same country and relation, other values).
        value_negatives: Extra hard negatives per edit and language: claims of the same relation and *value* about
            other countries, taken from the memory's countries (never an evaluation text); 0 for none.
        subject_negatives: Extra hard negatives per edit and language: the edit with its subject swapped, i.e. the
            same relation and value rendered about memory countries (`peft_mpn.data.add_subject_negatives`; never an
            evaluation text), whether or not the benchmark has such a claim; 0 for none.
        subject_true_first: Of those, up to this many about memory countries whose own value is the edit's value
            (true claims; ``add_subject_negatives(true_first=...)``).
        code_switch: Languages of code-switched training examples for the patch methods (the English edit, its
            hard negatives and the memory with their entity names in these languages, as the demo trains;
            `peft_mpn.data.aliases`); ``[]`` or ``["none"]`` for none (the default), ``["auto"]`` for the demo's
            choice (the first three languages of ``CODE_SWITCH_POOL`` that are not evaluated). An evaluated
            language is refused.
        neighbours: Neighbours (other claims about the same country) measured per record, in every language.
        sharpness: ``MPNConfig.sharpness`` of the patches.
        model: ``None`` for the demo's e5-small classifier (cached), ``"tiny"`` for a random smoke-test model.
        max_countries: Limit the benchmark (smoke runs).
        timing_rounds: Interleaved rounds of the inference timing (0 to skip it).
        eval_all, eval_stride: GR and neighbourhood are measured on the first ``eval_all`` records and on every
            ``eval_stride``-th record after them (ER and locality on every record and text): encoding every
            translation and neighbour of 1,000 records would cost more than the edits on a 2-core machine.
        edit: The patches' `EditConfig`.
        baseline: FT-L's and LoRA's `BaselineConfig`; ``None``: each its own, chosen on the validation split.
        grace: GRACE's `GraceConfig`.
        seed: Seeds the data and the edits.
    """

    methods: list[str] = field(default_factory=lambda: ["tpatcher", "mpn", "grace", "ft", "lora"])
    points: list[int] = field(default_factory=lambda: [1, 10, 100, 1000])
    train_languages: list[str] = field(default_factory=lambda: ["en", "fr", "de", "es"])
    heldout_languages: list[str] = field(default_factory=lambda: ["ru", "ar", "zh"])
    relations: list[str] = field(default_factory=lambda: ["capital", "continent", "currency", "language"])
    split: str = "test"
    memory_size: int = 1000
    n_negatives: int = 3
    value_negatives: int = 0
    subject_negatives: int = 0
    subject_true_first: int = 0
    code_switch: list[str] = field(default_factory=list)
    neighbours: int = 2
    sharpness: float = 10.0
    model: str | None = None
    max_countries: int | None = None
    timing_rounds: int = 5
    eval_all: int = 100
    eval_stride: int = 5
    edit: EditConfig = field(default_factory=EditConfig)
    baseline: BaselineConfig | None = None
    grace: GraceConfig = field(default_factory=GraceConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, cls in (("edit", EditConfig), ("baseline", BaselineConfig), ("grace", GraceConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        unknown = sorted(set(self.methods) - set(LABELS))
        if unknown or not self.methods:
            raise ValueError(f"LifelongConfig.methods has unknown {unknown}; use any of {list(LABELS)}.")
        if not self.points or any(not isinstance(p, int) or isinstance(p, bool) or p < 1 for p in self.points):
            raise ValueError(
                f"LifelongConfig.points must be whole numbers >= 1, e.g. [1, 10, 100]; got {self.points}."
            )
        self.points = sorted(set(self.points))
        for name in ("value_negatives", "subject_negatives", "subject_true_first", "n_negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"LifelongConfig.{name} must be an int >= 0 (negatives per edit), got {value!r}.")
        if self.subject_true_first > self.subject_negatives:
            raise ValueError(
                f"LifelongConfig.subject_true_first ({self.subject_true_first}) must be <= subject_negatives "
                f"({self.subject_negatives}): it counts how many of those are true claims."
            )
        if self.split not in ("test", "validation"):
            raise ValueError(f"LifelongConfig.split must be 'test' or 'validation', got {self.split!r}.")
        if list(self.code_switch) == ["none"]:
            self.code_switch = []
        if list(self.code_switch) == ["auto"]:
            from ..data.aliases import default_code_switch

            self.code_switch = default_code_switch(self.languages)
        if "en" in self.code_switch or set(self.code_switch) & set(self.languages):
            raise ValueError(
                f"LifelongConfig.code_switch must name languages that are not evaluated ({self.languages}), "
                f"got {self.code_switch}; use e.g. ['ja', 'ko', 'he'] or ['auto']."
            )
        if "en" not in self.train_languages or set(self.train_languages) & set(self.heldout_languages):
            raise ValueError(
                "LifelongConfig: train_languages must include 'en' and share none with heldout_languages."
            )

    def in_sample(self, index: int) -> bool:
        """Whether the record at ``index`` of the stream is one whose translations and neighbours are measured."""
        return index < self.eval_all or (index - self.eval_all) % self.eval_stride == 0

    @property
    def languages(self) -> list[str]:
        """Training then held-out languages."""
        return [*self.train_languages, *self.heldout_languages]

    def data_key(self) -> str:
        """Key of what shapes the data and its cached encodings."""
        keys = (
            "relations",
            "split",
            "memory_size",
            "n_negatives",
            "value_negatives",
            "subject_negatives",
            "subject_true_first",
            "neighbours",
            "model",
            "max_countries",
            "seed",
        )
        data = {k: getattr(self, k) for k in keys} | {"languages": self.languages, "n": max(self.points)}
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class LifelongData:
    """The records in stream order, the memory, the locality texts, and the evaluation texts of each record."""

    records: list[EditRecord]
    memory: dict[str, list[str]]
    locality: list[str]
    neighbours: list[list[tuple[int | None, list[str]]]]  # per record and neighbour: where it is edited, its texts
    neighbour_labels: list[list[int]]
    available: int  # records the benchmark could supply for this split
    locality_meta: list[dict[str, str]] = field(default_factory=list)  # per text: relation, value, truth, country


# ---------------------------------------------------------------------------------------------------- data
def _round_robin(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_country: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_country.setdefault(record["meta"]["country"], []).append(record)
    out, depth = [], 0
    while len(out) < len(records):
        out += [group[depth] for group in by_country.values() if depth < len(group)]
        depth += 1
    return out


def build_data(
    config: LifelongConfig, predict: Callable[[list[str]], list[int]], log: Callable[[str], None]
) -> LifelongData:
    """The stream's records (labelled against ``predict``, the original model), memory and locality texts.

    Raises:
        ValueError: If the benchmark has fewer records than ``max(points)`` for the split (the message says how many).
    """
    from ..data import add_subject_negatives, to_edit_records

    common = {"languages": config.languages, "relations": config.relations, "seed": config.seed}
    common["max_countries"] = config.max_countries
    everything = to_edit_records(**common, n_negatives=config.n_negatives)
    everything = [r for r in everything if all(lang in r["inputs"] for lang in config.languages)]
    train = [r for r in everything if r["meta"]["split"] == "train"]
    train_countries = list(dict.fromkeys(r["meta"]["country"] for r in train))
    need = max(config.points)
    if config.split == "test":
        # edits: test countries, then training countries from the front; memory: training countries from the back
        candidates = _round_robin([r for r in everything if r["meta"]["split"] == "test"])
        held_apart = train_countries[len(train_countries) // 2 :]  # memory countries: never edited
        candidates += _round_robin([r for r in train if r["meta"]["country"] not in held_apart])
        memory_pool = [r for r in train if r["meta"]["country"] in held_apart]
        locality_rows = [r for r in everything if r["meta"]["split"] == "validation"]
    else:
        candidates = _round_robin([r for r in everything if r["meta"]["split"] == "validation"])
        quarter = len(train_countries) // 4
        held_apart = train_countries[:quarter]  # locality countries, out of the memory
        # a stream longer than the validation claims goes on with the second quarter of the training countries,
        # which then leave the memory (as the test stream's training countries do); shorter streams keep them in it
        extension = train_countries[quarter : 2 * quarter] if need > len(candidates) else []
        candidates += _round_robin([r for r in train if r["meta"]["country"] in extension])
        memory_pool = [r for r in train if r["meta"]["country"] not in held_apart + extension]
        locality_rows = [r for r in train if r["meta"]["country"] in held_apart]
    available = len(candidates)
    if need > available:
        raise ValueError(
            f"the benchmark supplies {available} edit records for split={config.split!r} (relations "
            f"{config.relations}, {len(config.languages)} languages); ask for points up to {available}."
        )
    chosen = candidates[:need]
    memory_countries = sorted({r["meta"]["country"] for r in memory_pool})
    base = predict([r["inputs"]["en"] for r in chosen])
    by_value: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in memory_pool:
        by_value.setdefault((r["meta"]["relation"], r["meta"]["value_key"]), []).append(r)
    records = []
    for row, prediction in zip(chosen, base):
        label = row["label"] if prediction != row["label"] else 1 - row["label"]  # wrong: the truth; right: flipped
        negatives = {lang: list(texts) for lang, texts in row.get("negatives", {}).items()}
        same_value = by_value.get((row["meta"]["relation"], row["meta"]["value_key"]), [])[: config.value_negatives]
        for other in same_value:  # other countries, same relation and value: what a patch must not learn
            for lang, text in other["inputs"].items():
                negatives.setdefault(lang, []).append(text)
        record = EditRecord.from_dict({**row, "label": label, "negatives": negatives})
        if config.subject_negatives:  # the same relation and value about memory countries, rendered
            (record,) = add_subject_negatives(
                [record],
                memory_countries,
                config.subject_negatives,
                languages=config.train_languages,
                seed=config.seed,
                true_first=config.subject_true_first,
            )
        records.append(record)
    wrong = sum(p != r["label"] for p, r in zip(base, chosen))
    log(f"{len(records)} records ({wrong} the base gets wrong, {len(records) - wrong} flipped); {available} available")

    memory_texts = [lang_text for r in memory_pool for lang_text in r["inputs"].items()]
    step = max(1, len(memory_texts) // max(config.memory_size, 1))
    sampled = memory_texts[::step]
    memory = {
        "en": [t for lang, t in sampled if lang == "en"][: config.memory_size],
        "multi": [t for lang, t in sampled if lang in config.train_languages][: config.memory_size],
    }
    locality = [r["inputs"][lang] for r in locality_rows for lang in config.languages]
    locality_meta = [
        {k: r["meta"][k] for k in ("relation", "value_key", "true_key", "country")} | {"language": lang}
        for r in locality_rows
        for lang in config.languages
    ]
    position = {r.inputs["en"]: i for i, r in enumerate(records)}
    neighbours, neighbour_labels = [], []
    for record in records:
        kept = record.neighbours[: config.neighbours]
        # (the position in the stream at which this neighbour is itself edited, or None; its texts)
        neighbours.append(
            [
                (
                    position.get(n["inputs"].get("en")),
                    [n["inputs"][lang] for lang in config.languages if lang in n["inputs"]],
                )
                for n in kept
            ]
        )
        neighbour_labels.append([n["label"] for n in kept])
    return LifelongData(records, memory, locality, neighbours, neighbour_labels, available, locality_meta)


# ---------------------------------------------------------------------------------------------------- models
def tiny_model(texts: Sequence[str], seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """A random 2-layer BERT classifier (width 64) and a word-level tokenizer over ``texts`` (smoke runs only)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        initializer_range=0.5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval(), tokenizer


def load_model(config: LifelongConfig, log: Callable[[str], None]) -> tuple[torch.nn.Module, Any]:
    """The original classifier: the demo's e5-small head (cached), or a tiny random model."""
    if config.model == "tiny":
        from ..data import to_edit_records

        rows = to_edit_records(
            languages=config.languages,
            relations=config.relations,
            seed=config.seed,
            max_countries=config.max_countries,
            n_negatives=config.n_negatives,
        )
        texts = [t for r in rows for t in r["inputs"].values()]
        texts += [t for r in rows for ts in r["negatives"].values() for t in ts]
        return tiny_model(texts, config.seed)
    from ..data import build_benchmark
    from ..data.benchmark import CLASSIC_DEMO
    from .experiment import ExperimentConfig, default_cache_dir, load_or_train_base

    demo = ExperimentConfig(model=config.model, seed=config.seed, **CLASSIC_DEMO)
    bench = build_benchmark(languages=demo.languages, relations=demo.relations, seed=demo.seed)
    model, tokenizer, _ = load_or_train_base(demo, bench, default_cache_dir(), log)
    return model.eval(), tokenizer


class ReadCache:
    """[CLS] FFN inputs of the edited layer for a list of texts, computed once from the original model."""

    def __init__(self, editor: MPNEditor, texts: list[str]) -> None:
        unique = list(dict.fromkeys(texts))
        self.index = {t: i for i, t in enumerate(unique)}
        reads, _ = editor._encode_reads(unique) if unique else (torch.zeros(0, 1), None)
        self.reads = reads

    def logits(self, suffix: Any, texts: list[str]) -> torch.Tensor:
        rows = torch.tensor([self.index[t] for t in texts], dtype=torch.long)
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), 4096):
                reads = self.reads[rows[start : start + 4096]].unsqueeze(1)
                out.append(suffix.logits(CachedInputs(reads, torch.ones(reads.shape[:2], dtype=torch.long))))
        return torch.cat(out) if out else torch.zeros(0, 2)

    def predict(self, suffix: Any, texts: list[str]) -> list[int]:
        return self.logits(suffix, texts).argmax(-1).tolist()


# ---------------------------------------------------------------------------------------------------- the run
def _editor(config: LifelongConfig, method: str, model: torch.nn.Module, tokenizer: Any, data: LifelongData):
    languages = ["en"] if method in ("tpatcher", "grace") else config.train_languages
    switch = {}
    if config.code_switch and method in ("mpn", "tpatcher"):
        from ..data.aliases import benchmark_alias_table

        aliases = benchmark_alias_table(config.code_switch, config.languages, config.relations, config.seed)
        switch = {"aliases": aliases, "code_switch": config.code_switch}
    return MPNEditor(
        model,
        tokenizer,
        languages=languages,
        memory=data.memory["en"] if method in ("tpatcher", "grace") else data.memory["multi"],
        method=method,
        config=copy.deepcopy(config.edit),
        mpn_config=MPNConfig(sharpness=config.sharpness) if method in ("mpn", "tpatcher") else None,
        baseline=(copy.deepcopy(config.baseline) or BaselineConfig.for_method(method, seed=config.seed))
        if method in ("ft", "lora")
        else None,
        grace=copy.deepcopy(config.grace) if method == "grace" else None,
        progress=False,
        **switch,
    )


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


@torch.no_grad()
def _inference_ratio(model: torch.nn.Module, base: torch.nn.Module, batch: dict[str, torch.Tensor], rounds: int):
    if rounds <= 0:
        return None
    ratios = []
    for _ in range(rounds):
        times = []
        for m in (base, model):
            start = time.perf_counter()
            m(**batch)
            times.append(time.perf_counter() - start)
        ratios.append(times[1] / times[0])
    return statistics.median(ratios)


def _patch_diagnostics(
    editor: MPNEditor,
    reads: torch.Tensor,
    data: LifelongData,
    flipped: Sequence[bool],
) -> dict[str, Any] | None:
    """For patch methods: which patches fire (pre-activation > 0) on the locality inputs, and on which.

    Besides the counts (inputs some patch fires on, most patches on one input), the false fires are described by
    the strongest patch on each input: its pre-activation (quantiles over the inputs it fires on, and over the
    flipped ones), and whether the edit that patch fixes shares the input's relation, value and language (the
    memory holds claims of every relation, so shared relation is the baseline; shared *value* points at what
    ``value_negatives`` target).
    """
    if editor.method not in ("mpn", "tpatcher"):
        return None
    blocks = editor.model.patch_blocks()
    bank = next(iter(blocks.values()))["key"].bank(editor.strategy.adapter_name)
    with torch.no_grad():
        pre = reads @ bank.weight().T + bank.bias()
    firing = (pre > 0).sum(1)
    out: dict[str, Any] = {
        "inputs_with_a_firing_patch": int((firing > 0).sum()),
        "max_patches_firing_on_one_input": int(firing.max()) if firing.numel() else 0,
    }
    if not pre.numel() or not data.locality_meta:
        return out
    # the record each neuron belongs to (one patch per edit, in stream order; sizes give neurons per patch)
    owner = torch.arange(bank.num_patches).repeat_interleave(bank.sizes.cpu())
    top, neuron = pre.max(1)
    fired = (top > 0).nonzero().flatten().tolist()
    flips = [i for i in fired if flipped[i]]
    out["flipped_without_a_firing_patch"] = sum(bool(f) for f in flipped) - len(flips)

    def describe(indices: list[int]) -> dict[str, Any]:
        if not indices:
            return {"n": 0}
        values = top[indices]
        shared = {"relation": 0, "value": 0}
        for i in indices:
            record = data.records[int(owner[neuron[i]])]
            meta = data.locality_meta[i]
            shared["relation"] += record.meta.get("relation") == meta["relation"]
            shared["value"] += (
                record.meta.get("relation") == meta["relation"] and record.meta.get("value_key") == meta["value_key"]
            )
        return {
            "n": len(indices),
            "pre_activation_quantiles": [round(float(q), 3) for q in values.quantile(torch.tensor([0.25, 0.5, 0.75]))],
            "share_same_relation": shared["relation"] / len(indices),
            "share_same_relation_and_value": shared["value"] / len(indices),
            "share_true_claims": sum(
                data.locality_meta[i]["value_key"] == data.locality_meta[i].get("true_key") for i in indices
            )
            / len(indices),
            "languages": dict(sorted(Counter(data.locality_meta[i]["language"] for i in indices).items())),
            "patches_involved": len({int(owner[neuron[i]]) for i in indices}),
        }

    out["false_fires"] = describe(fired)
    out["flipped_fires"] = describe(flips)
    hubs = Counter(int(owner[neuron[i]]) for i in fired).most_common(5)  # the patches with most false fires
    out["top_firing_patches"] = [
        {
            "stream_index": index,
            "fires": fires,
            "flips": sum(int(owner[neuron[i]]) == index for i in flips),
            "relation": data.records[index].meta.get("relation"),
            "value": data.records[index].meta.get("value_key"),
            "claim_is_true": data.records[index].meta.get("value_key") == data.records[index].meta.get("true_key"),
            "label": data.records[index].label,
        }
        for index, fires in hubs
    ]
    return out


@torch.no_grad()
def _threshold_sweep(
    config: LifelongConfig,
    editor: MPNEditor,
    cache: ReadCache,
    data: LifelongData,
    records: list[EditRecord],
    original: dict[str, Any],
) -> dict[str, dict[str, float | None]]:
    """Locality, ER and held-out GR if every patch fired only above ``delta`` (its bias lowered by ``delta``).

    A post-hoc probe of where locality is lost: flips caused by patches that fire weakly on unrelated inputs vanish
    as ``delta`` grows, at the price of the edits (and translations) whose own pre-activation is below it.
    """
    blocks = editor.model.patch_blocks()
    bank = next(iter(blocks.values()))["key"].bank(editor.strategy.adapter_name)
    if len(bank.weights):
        return {}
    saved = bank.frozen_bias.clone()
    out = {}
    try:
        for delta in (0.1, 0.25, 0.5, 1.0, 2.0):
            bank.frozen_bias.copy_(saved - delta)
            after = cache.predict(editor.suffix, data.locality)
            er = cache.predict(editor.suffix, [r.inputs["en"] for r in records])
            sampled = [r for i, r in enumerate(records) if config.in_sample(i)]  # the cached translations
            held = [(r.inputs[lang], r.label) for r in sampled for lang in config.heldout_languages]
            gr = cache.predict(editor.suffix, [t for t, _ in held])
            out[str(delta)] = {
                "locality": _share([a == b for a, b in zip(after, original["locality"])]),
                "ER": _share([p == r.label for p, r in zip(er, records)]),
                "GR_heldout": _share([p == y for p, (_, y) in zip(gr, held)]),
            }
    finally:
        bank.frozen_bias.copy_(saved)
    return out


def run_method(
    config: LifelongConfig,
    method: str,
    base: torch.nn.Module,
    tokenizer: Any,
    data: LifelongData,
    cache: ReadCache,
    original: dict[str, Any],
    log: Callable[[str], None],
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Edit the stream with ``method`` and measure it at every point; returns one row per point.

    ``on_row`` is called with each row as soon as it is measured (so that a run cut short keeps its points).
    """
    rows = []
    for row in method_rows(config, method, base, tokenizer, data, cache, original, log):
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def method_rows(
    config: LifelongConfig,
    method: str,
    base: torch.nn.Module,
    tokenizer: Any,
    data: LifelongData,
    cache: ReadCache,
    original: dict[str, Any],
    log: Callable[[str], None],
) -> Iterator[dict[str, Any]]:
    """`run_method` as a generator: edits up to the next point, yields its row, and so on (keeping its editor)."""
    torch.manual_seed(config.seed)
    editor = _editor(config, method, copy.deepcopy(base), tokenizer, data)
    memory = editor.collator.memory
    if memory and editor.config.position == "cls" and all(t in cache.index for t in memory):  # cached already
        reads = cache.reads[[cache.index[t] for t in memory]]
        editor._memory.append(reads, torch.arange(len(memory)), len(memory))
    editor.cache_memory()
    timing = tokenizer(data.locality[:32], padding=True, truncation=True, max_length=128, return_tensors="pt")
    stream = data.records
    if method not in ("mpn", "tpatcher"):  # hard negatives feed only the patches' memory loss: skip encoding them
        stream = [dataclasses.replace(r, negatives={}) for r in data.records]
    done, results = 0, []
    train_other = [lang for lang in config.train_languages if lang != "en"]
    for point in config.points:
        segment = stream[done:point]
        start = time.perf_counter()
        results += editor.edit_stream(segment, skip_correct=False)
        seconds = time.perf_counter() - start
        done = point
        records = data.records[:point]
        sample = [i for i in range(point) if config.in_sample(i)]  # GR and neighbourhood are measured on these
        suffix = editor.suffix
        row: dict[str, Any] = {"method": LABELS[method], "edits": point}
        er = cache.predict(suffix, [r.inputs["en"] for r in records])
        row["ER"] = _share([p == r.label for p, r in zip(er, records)])
        sampled = [records[i] for i in sample]
        for name, langs in (("GR_train", train_other), ("GR_heldout", config.heldout_languages)):
            texts = [(r.inputs[lang], r.label) for r in sampled for lang in langs]
            preds = cache.predict(suffix, [t for t, _ in texts])
            row[name] = _share([p == y for p, (_, y) in zip(preds, texts)])
        fixed = [
            (r.inputs[lang], r.label)
            for r in sampled
            for lang in config.heldout_languages
            if original[r.inputs[lang]] != r.label
        ]
        preds = cache.predict(suffix, [t for t, _ in fixed])
        row["GR_heldout_fixed"] = _share([p == y for p, (_, y) in zip(preds, fixed)])
        after = cache.predict(suffix, data.locality)
        row["locality"] = _share([a == b for a, b in zip(after, original["locality"])])
        neighbour_texts = [
            t for i in sample for at, group in data.neighbours[i] if at is None or at >= point for t in group
        ]  # neighbours not edited so far
        preds = cache.predict(suffix, neighbour_texts)
        row["neighbourhood"] = _share([p == original[t] for p, t in zip(preds, neighbour_texts)])
        row["SR"] = _share([r.success for r in results])
        row["seconds_per_edit"] = seconds / max(len(segment), 1)
        row["mean_steps"] = statistics.fmean(r.steps for r in results[-len(segment) :]) if segment else 0.0
        editor.model.eval()
        row["inference_ratio"] = _inference_ratio(editor.model, base, timing, config.timing_rounds)
        flips = [a != b for a, b in zip(after, original["locality"])]
        diagnostics = _patch_diagnostics(editor, cache.reads[[cache.index[t] for t in data.locality]], data, flips)
        if diagnostics is not None:
            row["locality_flipped"] = sum(flips)
            row.update(diagnostics)
            row["memory_texts"] = editor.memory_size  # every earlier edit joined the memory of later ones
            row["threshold_sweep"] = _threshold_sweep(config, editor, cache, data, records, original)
        log(
            f"{LABELS[method]} @ {point}: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k not in ("method", "edits"))
        )
        yield row


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if not math.isnan(value) else "nan"
    return str(value)


@dataclass
class Prepared:
    """What every method of a run shares: the original model, its tokenizer, the data, the cached reads and the
    original model's predictions (``text -> class``, and ``"locality"``: the locality texts' in order)."""

    base: torch.nn.Module
    tokenizer: Any
    data: LifelongData
    cache: ReadCache
    original: dict[str, Any]


def prepare(config: LifelongConfig, log: Callable[[str], None] = print) -> Prepared:
    """Load the original model, build the data, cache the evaluation reads and check them against the full model."""
    torch.manual_seed(config.seed)
    base, tokenizer = load_model(config, log)
    empty = LifelongData([], {"en": [], "multi": []}, [], [], [], 0)
    probe = _editor(config, "tpatcher", copy.deepcopy(base), tokenizer, empty)

    def predict_full(texts: list[str]) -> list[int]:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                batch = tokenizer(
                    texts[i : i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt"
                )
                out += base(**batch).logits.argmax(-1).tolist()
        return out

    data = build_data(config, predict_full, log)
    sampled = [i for i in range(len(data.records)) if config.in_sample(i)]
    texts = [r.inputs["en"] for r in data.records] + data.locality
    texts += [t for i in sampled for t in data.records[i].inputs.values()]
    texts += [t for i in sampled for _, group in data.neighbours[i] for t in group]
    texts += data.memory["en"] + data.memory["multi"]  # read once here, handed to every method's memory
    log(f"caching the [CLS] FFN inputs of {len(set(texts))} evaluation texts")
    cache = ReadCache(probe, texts)
    sample = data.locality[:16] + [r.inputs["en"] for r in data.records[:16]]
    full = torch.tensor(predict_full(sample))
    from ..editing.baselines import locate_ffn
    from ..tasks.classification.fastpath import FFNSuffix

    block, modules = locate_ffn(base)
    base_suffix = FFNSuffix(base, block, base.get_submodule(modules["key"]))
    if not torch.equal(torch.tensor(cache.predict(base_suffix, sample)), full):
        raise ValueError("the [CLS]-read evaluation disagrees with the full model: the classifier must pool [CLS].")
    every = list(dict.fromkeys(texts))
    original: dict[str, Any] = dict(zip(every, cache.predict(base_suffix, every)))  # text -> original prediction
    original["locality"] = [original[t] for t in data.locality]
    return Prepared(base, tokenizer, data, cache, original)


def run_lifelong(
    config: LifelongConfig,
    output: str | Path | None = None,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the curve for every method; write ``lifelong.json`` (and ``lifelong.md``) into ``output`` if given."""
    started = time.perf_counter()
    prepared = prepare(config, log)
    base, tokenizer, data, cache, original = (
        prepared.base,
        prepared.tokenizer,
        prepared.data,
        prepared.cache,
        prepared.original,
    )
    rows: list[dict[str, Any]] = []

    def save(complete: bool) -> dict[str, Any]:
        report = _report(config, data, rows, started, complete)
        if output is not None:
            out = Path(output)
            out.mkdir(parents=True, exist_ok=True)
            text = json.dumps(report, indent=2, allow_nan=False, default=_none) + "\n"
            atomic_write_text(out / "lifelong.json", text)
            atomic_write_text(out / "lifelong.md", markdown_table(rows) + "\n")
        return report

    # breadth first: every method up to a point before any goes further, so a run cut short has whole points
    streams = {
        method: method_rows(config, method, base, tokenizer, data, cache, original, log) for method in config.methods
    }
    for point in config.points:
        for method, stream in streams.items():
            log(f"editing up to {point} records with {LABELS[method]}")
            rows.append(next(stream))
            save(False)
    return save(True)


def _report(
    config: LifelongConfig, data: LifelongData, rows: list[dict[str, Any]], started: float, complete: bool
) -> dict[str, Any]:
    return {
        "benchmark": "lifelong",
        "config": {
            **asdict(config),
            "edit": config.edit.to_dict(),
            "baseline": None if config.baseline is None else config.baseline.to_dict(),
            "grace": config.grace.to_dict(),
        },
        "records_available": data.available,
        "memory_texts": {k: len(v) for k, v in data.memory.items()},
        "locality_texts": len(data.locality),
        "rows": rows,
        "complete": complete,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _none(value: Any) -> Any:
    return None


COLUMNS = [
    ("edits", "edits"),
    ("ER", "ER"),
    ("GR_train", "GR train"),
    ("GR_heldout", "GR held-out"),
    ("GR_heldout_fixed", "GR held-out (fixed)"),
    ("locality", "locality vs original"),
    ("neighbourhood", "neighbourhood"),
    ("seconds_per_edit", "s/edit"),
    ("inference_ratio", "inference x"),
]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The curve as a markdown table: one row per method and point."""
    head = "| method | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|---|" + "---:|" * len(COLUMNS)]
    for row in rows:
        cells = [_cell(row.get(key), key) for key, _ in COLUMNS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key == "edits":
        return f"{value:,}"
    if key == "seconds_per_edit":
        return f"{value:.3f}"
    if key == "inference_ratio":
        return f"{value:.2f}"
    return f"{value:.3f}"


def plot(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """ER, held-out GR, locality and seconds per edit against the number of edits (log scale), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("ER", "ER"),
        ("GR_heldout", "GR held-out"),
        ("locality", "locality vs original"),
        ("seconds_per_edit", "seconds per edit"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.4), dpi=110)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, (key, title) in zip(axes, panels):
        for method in methods:
            points = [(r["edits"], r[key]) for r in rows if r["method"] == method and r.get(key) is not None]
            ax.plot([p for p, _ in points], [v for _, v in points], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("edits in the stream")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = [
    "LifelongConfig",
    "Prepared",
    "build_data",
    "markdown_table",
    "plot",
    "prepare",
    "run_lifelong",
    "run_method",
]
