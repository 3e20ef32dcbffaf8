"""The generation experiment: T-Patcher, MPN, FT-L and LoRA side by side on counterfactual edits of a causal LM.

Every method edits the same stream of records, one after the other in one editor (`CausalLMEditor`), and is measured
on its FINAL model, after all its edits, against the ORIGINAL model. The figures go into the report format of the
classification demo (`peft_mpn.benchmark.report`):

- **SR**: the English target is produced right after its edit (teacher forcing and greedy, `GenerationEditResult`).
- **ER** (efficacy at the end of the stream): the English target is the argmax at every target position under
  teacher forcing, which is exactly when greedy decoding produces it.
- **GR** per language: the same check on the translated prompts (training languages and held-out languages apart);
  ``fixed`` counts only translations the original model did not already produce.
- **Locality**: unrelated prompts keep the original model's next token (``retain_rate``); ``tokens`` also gives the
  agreement with the original model's greedy continuation under teacher forcing.
- **Neighbourhood**: prompts of the same relation about other subjects (and, where the data has them, other relations
  about the edited subject) keep their next token.
- **s/edit**: wall time per edit (median, p90).
- ``target_logprob``: the mean log-probability of each language's target before and after, for a weak base model
  whose argmax moves late.

Example:
    >>> config = GenerationExperimentConfig(methods=["tpatcher", "mpn"])
    >>> results = run_generation_experiment(config, data, model, tok, "runs/gen")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..editing import metrics
from ..editing.baselines import BaselineConfig
from ..editing.losses import EditConfig
from ..tasks.generation.collator import EncodedEdit, GenerationEditCollator
from ..tasks.generation.editor import KEY_INITS, CausalLMEditor
from ..tasks.generation.generate import batched_greedy, teacher_forced_scores
from ..tuner.config import MPNConfig


LABELS = {"tpatcher": "T-Patcher", "mpn": "MPN", "ft": "FT-L", "lora": "LoRA"}


@dataclass
class GenerationData:
    """What a generation experiment edits and measures.

    Attributes:
        records: Generation edit records (dicts of `GenerationEditRecord`): a prompt and a new target per language.
        memory: ``{"text", "lang"}`` texts the patches must stay silent on (never evaluation prompts); a method gets
            those in its training languages.
        neighbours: ``{"prompt", "lang"}`` prompts close to the edits (same relation, other subjects; or the edited
            subject, another relation) whose next token must not change.
        unrelated: ``{"prompt", "lang"}`` unrelated prompts whose next token must not change.
        aliases: An alias table ``{entity: {lang: name}}`` of the subjects' names (see `peft_mpn.data.aliases`),
            for ``GenerationExperimentConfig.code_switch``.
        script_memory: ``{"text", "lang"}`` unrelated texts in languages the experiment does not evaluate, in many
            scripts (`peft_mpn.data.script_memory`), for ``GenerationExperimentConfig.script_memory``.
    """

    records: list[dict[str, Any]]
    memory: list[dict[str, str]]
    neighbours: list[dict[str, str]] = field(default_factory=list)
    unrelated: list[dict[str, str]] = field(default_factory=list)
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    script_memory: list[dict[str, str]] = field(default_factory=list)


@dataclass
class GenerationExperimentConfig:
    """Settings of a generation experiment.

    Args:
        methods: Methods in order (``"tpatcher"``, ``"mpn"``, ``"ft"``, ``"lora"``).
        train_languages: Languages MPN trains each patch on (English first); T-Patcher trains on English only, FT-L
            and LoRA on these too.
        heldout_languages: Languages no method trains on (reported apart).
        edit: The patches' `EditConfig`.
        patch_layer: The layer T-Patcher's and MPN's patches go into (``None``: the last one, Transformer-Patcher's
            choice; a negative index counts from the end). Below the last layer the editor trains on the cached
            input of that layer and reruns only the layers above it (`LMLayerSuffix`).
        split_spellings: MPN gives each spelling of a target token its own neuron where the training languages
            disagree (`CausalLMEditor`'s ``split_spellings``).
        sharpness: T-Patcher's and MPN's patch units, ``(v / s) * act(s * (k . x + b))`` (`MPNConfig.sharpness`, 10 by
            default; 1 is the model's own FFN unit).
        code_switch: Languages of code-switched training examples for T-Patcher and MPN: the English prompt with the
            subject's name in each language (``GenerationData.aliases``) and the English target. ``[]``: none. They
            must not be evaluated languages (their names would then be trained on).
        code_switch_memory: With ``code_switch``, code-switched copies of the memory's texts join the memory.
        key_init: How T-Patcher's and MPN's keys start (`CausalLMEditor`'s ``key_init``): ``"input"``
            (Transformer-Patcher) or ``"fit"`` (a logistic key of the edit's inputs against the memory).
        train_key: Train the patches' keys with their values (`CausalLMEditor`'s ``train_key``).
        script_memory: Every method's memory also gets ``GenerationData.script_memory``: unrelated texts in many
            scripts and in languages that are not evaluated, so that a patch learns to stay silent on scripts its
            training languages do not show (default on: on the validation split it kept the India patch off Hindi
            prompts, locality 0.867 -> 0.978; docs/benchmark.md).
        baselines: ``method -> BaselineConfig`` for FT-L and LoRA (default ``BaselineConfig.for_method``).
        continuation_tokens: Tokens of the original model's greedy continuation that locality compares.
        n_examples: Records whose greedy generations before and after go into the examples table.
        example_tokens: Tokens generated per example.
        seed: Seeds every method the same way.
    """

    methods: list[str] = field(default_factory=lambda: ["tpatcher", "mpn", "ft", "lora"])
    train_languages: list[str] = field(default_factory=lambda: ["en", "fr"])
    heldout_languages: list[str] = field(default_factory=lambda: ["de", "es", "ru", "ar", "zh"])
    edit: EditConfig = field(default_factory=EditConfig)
    patch_layer: int | None = None
    split_spellings: bool = True
    sharpness: float = 10.0
    code_switch: list[str] = field(default_factory=list)
    code_switch_memory: bool = True
    key_init: str = "input"
    train_key: bool = True
    script_memory: bool = True
    baselines: dict[str, BaselineConfig] = field(default_factory=dict)
    continuation_tokens: int = 4
    n_examples: int = 2
    example_tokens: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in LABELS]
        if bad or not self.methods:
            raise ValueError(f"GenerationExperimentConfig.methods must be some of {list(LABELS)}, got {self.methods}.")
        if "en" not in self.train_languages:
            raise ValueError("GenerationExperimentConfig.train_languages must include 'en' (the edit language).")
        both = set(self.train_languages) & set(self.heldout_languages)
        if both:
            raise ValueError(f"languages {sorted(both)} are both training and held-out languages; pick one.")
        if isinstance(self.code_switch, str):
            raise TypeError(
                f"GenerationExperimentConfig.code_switch must be a list like ['ko'], not {self.code_switch!r}."
            )
        evaluated = sorted(set(self.code_switch) & {*self.train_languages, *self.heldout_languages})
        if evaluated:
            raise ValueError(
                f"GenerationExperimentConfig.code_switch lists evaluated languages {evaluated}: their names would be "
                "trained on; use languages the experiment does not evaluate (peft_mpn.data.aliases.CODE_SWITCH_POOL)."
            )
        if self.key_init not in KEY_INITS:
            raise ValueError(f"GenerationExperimentConfig.key_init must be 'input' or 'fit', not {self.key_init!r}.")

    @property
    def languages(self) -> list[str]:
        """Every evaluated language: training languages, then held-out ones."""
        return list(dict.fromkeys([*self.train_languages, *self.heldout_languages]))

    def baseline(self, method: str) -> BaselineConfig:
        """FT-L's or LoRA's `BaselineConfig` (given, or the validated defaults with this seed)."""
        return copy.deepcopy(self.baselines.get(method)) or BaselineConfig.for_method(method, seed=self.seed)


class _Probe:
    """The measurements taken on one model state: before the edits (the original model) or after a method's."""

    def __init__(self, tokenizer: Any, data: GenerationData, languages: Sequence[str]) -> None:
        self.collator = GenerationEditCollator(tokenizer, ["en"])
        self.tokenizer = tokenizer
        self.languages = list(languages)
        self.edits = [
            (r["id"], lang, self.collator.encode(r["prompt"][lang], r["target"][lang], record_id=r["id"], lang=lang))
            for r in data.records
            for lang in self.languages
            if lang in r["prompt"]
        ]
        # Each prompt with every other language's spelling of the new target (" Taipei" for de " Taipeh"): a
        # held-out language often moves to the new capital in another spelling, which the strict check misses.
        self.spellings = [
            (r["id"], lang, self.collator.encode(r["prompt"][lang], other, record_id=r["id"], lang=lang))
            for r in data.records
            for lang in self.languages
            if lang in r["prompt"]
            for other in dict.fromkeys(t for key, t in r["target"].items() if key != lang and t != r["target"][lang])
        ]
        self.neighbours = [self.collator.text_ids(n["prompt"]) for n in data.neighbours]
        self.unrelated = [self.collator.text_ids(u["prompt"]) for u in data.unrelated]
        self.examples = [
            (r["id"], lang, self.collator.text_ids(r["prompt"][lang]))
            for r in data.records
            for lang in self.languages
            if lang in r["prompt"]
        ]

    def next_tokens(self, model: torch.nn.Module, prompts: Sequence[list[int]]) -> list[int]:
        """The argmax next token after each prompt (batched, teacher forcing on a placeholder target)."""
        scored = teacher_forced_scores(model, [EncodedEdit(list(p), [0]) for p in prompts], self.collator.pad_id)
        return [ids[0] for ids, _ in scored]

    def measure(
        self,
        model: torch.nn.Module,
        continuation: Sequence[list[int]] | None,
        examples: Sequence[int],
        example_tokens: int,
    ) -> dict[str, Any]:
        """Targets right (teacher forcing), target log-probabilities, next tokens of neighbours and unrelated
        prompts, agreement with ``continuation`` (the original's greedy continuation) and example generations."""
        scored = teacher_forced_scores(model, [e for _, _, e in self.edits], self.collator.pad_id)
        right: dict[str, dict[str, bool]] = {}
        logprob: dict[str, dict[str, float]] = {}
        for (rid, lang, enc), (ids, lp) in zip(self.edits, scored):
            right.setdefault(rid, {})[lang] = ids == enc.target_ids
            logprob.setdefault(rid, {})[lang] = lp
        any_spelling = {rid: dict(flags) for rid, flags in right.items()}
        spelled = teacher_forced_scores(model, [e for _, _, e in self.spellings], self.collator.pad_id)
        for (rid, lang, enc), (ids, _) in zip(self.spellings, spelled):
            any_spelling[rid][lang] = any_spelling[rid][lang] or ids == enc.target_ids
        out: dict[str, Any] = {
            "right": right,
            "any_spelling": any_spelling,
            "logprob": logprob,
            "neighbours": self.next_tokens(model, self.neighbours) if self.neighbours else [],
            "unrelated": self.next_tokens(model, self.unrelated) if self.unrelated else [],
        }
        if continuation is not None and self.unrelated:
            edits = [EncodedEdit(list(p), list(c)) for p, c in zip(self.unrelated, continuation) if c]
            predicted = [ids for ids, _ in teacher_forced_scores(model, edits, self.collator.pad_id)]
            from ..tasks.generation.metrics import token_agreement

            out["tokens"] = token_agreement([e.target_ids for e in edits], predicted)
        chosen = [self.examples[i] for i in examples]
        generated = batched_greedy(model, [ids for _, _, ids in chosen], example_tokens, self.collator.pad_id)
        decode = self.tokenizer.decode
        out["examples"] = {
            f"{rid}|{lang}": decode(g, skip_special_tokens=True) for (rid, lang, _), g in zip(chosen, generated)
        }
        return out


def _per_language(flags: Mapping[str, Mapping[str, bool]], ids: Sequence[str], languages: Sequence[str]) -> dict:
    return {lang: [flags[rid].get(lang) for rid in ids] for lang in languages}


def _mean_logprob(logprob: Mapping[str, Mapping[str, float]], ids: Sequence[str], lang: str) -> float:
    values = [logprob[rid][lang] for rid in ids if lang in logprob[rid]]
    return statistics.fmean(values) if values else float("nan")


def _by_language(values: Sequence[Any], data: Sequence[Mapping[str, str]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for value, item in zip(values, data):
        out.setdefault(item["lang"], []).append(value)
    return out


def method_metrics(
    config: GenerationExperimentConfig,
    data: GenerationData,
    results: Sequence[Any],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
) -> dict[str, Any]:
    """One method's metrics in the shared report layout (`peft_mpn.metrics.summarize`), plus the generation
    extras: ``ER_teacher_forced``, ``target_logprob`` (per language, before and after) and ``locality_tokens``."""
    edited = [r.id for r in results if not r.skipped]
    gr = metrics.generalization(
        _per_language(before["right"], edited, config.languages),
        _per_language(after["right"], edited, config.languages),
        None,
    )
    er = metrics.accuracy([after["right"][rid]["en"] for rid in edited], None) if edited else float("nan")
    locality = metrics.neighbourhood_locality(
        _by_language(before["unrelated"], data.unrelated), _by_language(after["unrelated"], data.unrelated)
    )
    neighbourhood = metrics.neighbourhood_locality(
        _by_language(before["neighbours"], data.neighbours), _by_language(after["neighbours"], data.neighbours)
    )
    summary = metrics.summarize(
        results,
        train_languages=config.train_languages,
        heldout_languages=config.heldout_languages,
        gr=gr,
        er=er,
        locality=locality,
        neighbourhood=neighbourhood,
    )
    any_spelling = metrics.generalization(
        _per_language(before["any_spelling"], edited, config.languages),
        _per_language(after["any_spelling"], edited, config.languages),
        None,
    )
    summary["GR_any_spelling"] = any_spelling
    for part, languages in (("train", config.train_languages), ("heldout", config.heldout_languages)):
        values = [any_spelling[lang]["all"] for lang in languages if lang != "en" and lang in any_spelling]
        summary[f"GR_any_spelling_mean_{part}"] = statistics.fmean(values) if values else float("nan")
    summary["locality_tokens"] = after.get("tokens")
    summary["target_logprob"] = {
        lang: {
            "before": _mean_logprob(before["logprob"], edited, lang),
            "after": _mean_logprob(after["logprob"], edited, lang),
        }
        for lang in config.languages
    }
    return summary


def examples_table(
    data: GenerationData, before: Mapping[str, Any], after: Mapping[str, Mapping[str, Any]], labels: Sequence[str]
) -> str:
    """A markdown table of greedy generations: per example prompt, the target, the original model's and each
    method's continuation."""
    header = ["record", "lang", "target", "original", *labels]
    prompts = {r["id"]: r for r in data.records}
    rows = []
    for key, original in before["examples"].items():
        rid, lang = key.split("|")
        cells = [rid, lang, prompts[rid]["target"][lang].strip(), original.strip()]
        cells += [after[label]["examples"].get(key, "").strip() for label in labels]
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", "⏎") for c in cells) + " |")
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]) + "\n"


def any_spelling_table(results: Mapping[str, Any]) -> str:
    """GR per language counting any language's spelling of the new target as right (``GR_any_spelling``)."""
    from .report import HELDOUT_MARK

    heldout = list(results.get("heldout_languages") or [])
    languages = [*results.get("train_languages", []), *heldout]
    header = ["Method", *(f"{lang}{HELDOUT_MARK if lang in heldout else ''}" for lang in languages)]
    header += ["train", f"held-out{HELDOUT_MARK}"]
    rows = []
    for label, m in results["methods"].items():
        gr = m.get("GR_any_spelling") or {}
        cells = [gr.get(lang, {}).get("all") for lang in languages]
        cells += [m.get("GR_any_spelling_mean_train"), m.get("GR_any_spelling_mean_heldout")]
        rows.append([label, *("n/a" if v is None or v != v else f"{v:.3f}" for v in cells)])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def run_generation_experiment(
    config: GenerationExperimentConfig,
    data: GenerationData,
    model: torch.nn.Module,
    tokenizer: Any,
    output_dir: str | os.PathLike | None = None,
    *,
    model_name: str = "causal LM",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Edit ``data.records`` with each method on a fresh copy of ``model``; measure each final model.

    Args:
        config: The methods, languages and settings.
        data: Records, memory, neighbour and unrelated prompts (`GenerationData`).
        model: The original causal LM (left unchanged: each method edits a deep copy).
        tokenizer: Its tokenizer.
        output_dir: Where ``results.json``, ``report.md``, ``report.png`` and ``generations.md`` go (``None``:
            nothing is written).
        model_name: The model's name in the report.
        progress: Progress bars while editing.
        log: Where progress lines go.

    Returns:
        The results dict of `peft_mpn.benchmark.report` (``methods``, ``train_languages``, ``heldout_languages``,
        ``setup``) with ``examples`` (the generations table's data) added.
    """
    if not data.records:
        raise ValueError("GenerationData.records is empty: nothing to edit.")
    missing = sorted({lang for r in data.records for lang in config.train_languages if lang not in r["prompt"]})
    if missing:
        raise ValueError(f"every record needs a prompt in the training languages; missing {missing} in some records.")
    start = time.perf_counter()
    probe = _Probe(tokenizer, data, config.languages)
    shown = {r["id"] for r in data.records[: config.n_examples]}
    example_index = [i for i, (rid, _, _) in enumerate(probe.examples) if rid in shown]
    model.eval()
    with torch.no_grad():
        continuation = batched_greedy(model, probe.unrelated, config.continuation_tokens, probe.collator.pad_id)
    before = probe.measure(model, continuation, example_index, config.example_tokens)
    log(f"original model measured ({len(probe.edits)} target prompts, {time.perf_counter() - start:.0f} s)")
    methods: dict[str, Any] = {}
    states: dict[str, Any] = {}
    for method in config.methods:
        label = LABELS[method]
        languages = ["en"] if method == "tpatcher" else config.train_languages
        memory = [m["text"] for m in data.memory if m["lang"] in languages]
        if config.script_memory:
            memory += [m["text"] for m in data.script_memory]
        torch.manual_seed(config.seed)
        patches = method in ("tpatcher", "mpn")
        layer = _patch_layer(config.patch_layer, model) if patches else None
        switch = config.code_switch if patches else []
        if switch and not data.aliases:
            raise ValueError("GenerationExperimentConfig.code_switch needs GenerationData.aliases (the names).")
        editor = CausalLMEditor(
            copy.deepcopy(model),
            tokenizer,
            languages,
            memory,
            method=method,
            config=copy.deepcopy(config.edit),
            baseline=config.baseline(method) if method in ("ft", "lora") else None,
            mpn_config=MPNConfig(layers_to_transform=None if layer is None else [layer], sharpness=config.sharpness),
            **(
                {"split_spellings": config.split_spellings, "key_init": config.key_init, "train_key": config.train_key}
                if patches
                else {}
            ),
            progress=progress,
            aliases=data.aliases if switch else None,
            code_switch=switch,
            code_switch_memory=config.code_switch_memory,
        )
        t0 = time.perf_counter()
        results = editor.edit_stream(data.records)
        edit_seconds = time.perf_counter() - t0
        after = probe.measure(editor.model, continuation, example_index, config.example_tokens)
        methods[label] = method_metrics(config, data, results, before, after)
        methods[label]["fast_path"] = editor.fast
        methods[label]["results"] = [r.to_dict() for r in results]
        states[label] = after
        done = methods[label]
        log(
            f"{label}: {done['n_edits']} edits in {edit_seconds:.0f} s, SR {done['SR']:.2f}, ER {done['ER']:.2f}, "
            f"GR train {done['GR_mean_train']:.2f}, held-out {done['GR_mean_heldout']:.2f}, "
            f"locality {done['locality']['retain_rate']:.2f}"
        )
        del editor
    results_dict: dict[str, Any] = {
        "methods": methods,
        "train_languages": config.train_languages,
        "heldout_languages": config.heldout_languages,
        "examples": {"original": before["examples"], **{k: v["examples"] for k, v in states.items()}},
        "setup": {
            "task": "generation (counterfactual edits of a causal LM)",
            "model": model_name,
            "n_edits": len(data.records),
            "memory_size": len(data.memory),
            "script_memory": len(data.script_memory) if config.script_memory else 0,
            "code_switch": config.code_switch,
            "neighbour_prompts": len(data.neighbours),
            "unrelated_prompts": len(data.unrelated),
            "evaluation": "final model after all edits of a method, against the original model",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads",
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "seconds": round(time.perf_counter() - start, 1),
            "config": {
                **asdict(config),
                "edit": config.edit.to_dict(),
                "baselines": {m: config.baseline(m).to_dict() for m in config.methods if m in ("ft", "lora")},
            },
        },
    }
    if output_dir is not None:
        write_generation_report(results_dict, data, output_dir)
    return results_dict


def write_generation_report(results: Mapping[str, Any], data: GenerationData, output_dir: str | os.PathLike) -> dict:
    """``results.json``, ``report.md`` (with the generations table) and ``report.png`` in ``output_dir``."""
    from ..utils.io import atomic_write_text
    from .report import write_report

    labels = list(results["methods"])
    before = {"examples": results["examples"]["original"]}
    after = {label: {"examples": results["examples"][label]} for label in labels}
    table = examples_table(data, before, after, labels)
    sections = [
        ("GR with any language's spelling of the new target", any_spelling_table(results)),
        ("Greedy generations before and after the edits", table),
    ]
    paths = write_report(results, output_dir, sections=sections)
    paths["generations"] = Path(output_dir) / "generations.md"
    atomic_write_text(paths["generations"], "# Greedy generations before and after the edits\n\n" + table)
    return paths


# ---------------------------------------------------------------------------------------------------- the data
#: More unrelated prompts (everyday sentences and other facts) whose next token must not change, added to
#: `peft_mpn.data.counterfactual.unrelated_prompts`.
UNRELATED_PROMPTS: list[tuple[str, str]] = [
    ("en", "The largest planet in the solar system is"),
    ("en", "Water boils at a temperature of"),
    ("en", "The author of Hamlet is"),
    ("en", "The weather is lovely today, so we"),
    ("en", "My favourite colour is"),
    ("fr", "La plus grande planète du système solaire est"),
    ("fr", "Il fait beau aujourd'hui, alors nous"),
    ("fr", "L'auteur des Misérables est"),
    ("fr", "Le matin, je bois une tasse de"),
    ("fr", "Ma couleur préférée est le"),
    ("de", "Der längste Fluss der Welt ist der"),
    ("de", "Der Hund schläft auf dem"),
    ("de", "Der Autor von Faust ist"),
    ("de", "Am Morgen trinke ich eine Tasse"),
    ("de", "Meine Lieblingsfarbe ist"),
    ("es", "El océano más grande del mundo es el"),
    ("es", "Me gusta leer libros por la"),
    ("es", "El autor de Don Quijote es"),
    ("es", "Por la mañana bebo una taza de"),
    ("es", "Mi color favorito es el"),
    ("ru", "Самая высокая гора в мире —"),
    ("ru", "Я люблю читать"),
    ("ru", "Автор романа «Война и мир» —"),
    ("ru", "Утром я пью чашку"),
    ("ru", "Мой любимый цвет —"),
    ("ar", "أكبر محيط في العالم هو"),
    ("ar", "في الصباح أشرب فنجان"),
    ("ar", "لوني المفضل هو"),
    ("ar", "أطول نهر في العالم هو"),
    ("ar", "أحب أن أقرأ"),
    ("zh", "世界上最高的山是"),
    ("zh", "我喜欢在晚上"),
    ("zh", "《红楼梦》的作者是"),
    ("zh", "早上我喝一杯"),
    ("zh", "我最喜欢的颜色是"),
]
MEMORY_SENTENCES: list[tuple[str, str]] = [
    ("en", "The weather is lovely today, so we are going for a walk."),
    ("en", "She bought three apples and a loaf of bread at the market."),
    ("fr", "Il fait beau aujourd'hui, nous allons nous promener."),
    ("de", "Der Zug kommt um acht Uhr am Bahnhof an."),
    ("es", "Me gusta escuchar música cuando cocino."),
    ("ru", "Вчера мы ходили в кино с друзьями."),
    ("ar", "أحب قراءة الكتب في المساء."),
    ("zh", "我们明天早上去公园散步。"),
]


def _patch_layer(layer: int | None, model: torch.nn.Module) -> int | None:
    """``GenerationExperimentConfig.patch_layer`` as a layer index of ``model`` (``None``: the last layer)."""
    if layer is None:
        return None
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ValueError(
            f"GenerationExperimentConfig.patch_layer={layer} needs config.num_hidden_layers, which "
            f"{type(model).__name__} lacks; leave patch_layer None (the last layer)."
        )
    if not -n <= layer < n:
        raise ValueError(
            f"GenerationExperimentConfig.patch_layer must be in [{-n}, {n - 1}] for this model, got {layer}."
        )
    return layer % n


def counterfactual_data(
    split: str = "test",
    n_edits: int = 6,
    languages: Sequence[str] | None = None,
    *,
    relations: Sequence[str] = ("capital",),
    seed: int = 0,
    max_target_tokens: int | None = None,
    tokenizer: Any = None,
    alias_languages: Sequence[str] = (),
) -> GenerationData:
    """The demo's data from the counterfactual benchmark (`peft_mpn.data.counterfactual`, world-countries + CLDR).

    - **Edits**: the first ``n_edits`` records of ``split`` (one per country: its first relation of ``relations``),
      ``"Country: France\nCapital:"`` → another country's capital in each language's spelling.
    - **Memory**: the true facts of the *train* countries (prompt + true answer), tagged with their language, plus
      a few everyday sentences; a method gets those in its training languages. ``script_memory``: CLDR texts in
      the languages of `peft_mpn.data.script_memory.SCRIPT_POOL` that are not in ``languages``.
    - **Neighbours**: each edit's neighbour facts (other countries of the probe split, same relation; the same country
      in other relations where ``relations`` has them), in every language, never an edited prompt.
    - **Unrelated**: the records' unrelated prompts, the benchmark's general-knowledge prompts and
      :data:`UNRELATED_PROMPTS`, in the requested languages.

    Args:
        split: ``"validation"`` (for choosing settings) or ``"test"``.
        n_edits: Edits.
        languages: Prompt languages (default: the benchmark's 9, ``DEFAULT_LANGUAGES``).
        relations: Relations (default: capital, the one Gemma 3 270M knows best).
        seed: Seeds the benchmark (splits, new values, probes).
        max_target_tokens: With ``tokenizer``: only edits whose English target has at most this many tokens.
        tokenizer: The model's tokenizer (for ``max_target_tokens``).
        alias_languages: Languages of ``GenerationData.aliases``: each country's English name in the prompts and
            its CLDR name in these languages (names only, never a prompt or an answer), for code-switching.

    Raises:
        ValueError: An unknown split, language or relation, or fewer usable edits than ``n_edits``.
    """
    from ..data.counterfactual import (
        DEFAULT_LANGUAGES,
        build_counterfactual_records,
        one_per_country,
        unrelated_prompts,
    )
    from ..data.script_memory import script_memory

    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' or 'test' (train countries are the memory), not {split!r}.")
    languages = list(languages or DEFAULT_LANGUAGES)
    pool = one_per_country(build_counterfactual_records(languages, relations, seed, splits=[split]), relations)
    if max_target_tokens is not None and tokenizer is not None:
        pool = [
            r
            for r in pool
            if len(tokenizer(r.target["en"], add_special_tokens=False)["input_ids"]) <= max_target_tokens
        ]
    chosen = pool[:n_edits]
    if len(chosen) < n_edits:
        raise ValueError(f"the {split} split has only {len(chosen)} usable edits; ask for fewer.")
    edited = {r.prompt[lang] for r in chosen for lang in r.prompt}
    train = build_counterfactual_records(languages, relations, seed, splits=["train"])
    memory = [{"text": r.prompt[lang] + r.original[lang], "lang": lang} for r in train for lang in r.prompt]
    memory += [{"text": text, "lang": lang} for lang, text in MEMORY_SENTENCES if lang in languages]
    neighbours = list(
        {
            (n.prompt[lang], lang): None
            for r in chosen
            for n in r.neighbours
            for lang in n.prompt
            if n.prompt[lang] not in edited
        }
    )
    unrelated = [(text, lang) for r in chosen for text, lang in zip(r.locality, r.meta.get("locality_languages", []))]
    unrelated += [(text, lang) for lang, texts in unrelated_prompts(languages).items() for text in texts]
    unrelated += [(text, lang) for lang, text in UNRELATED_PROMPTS if lang in languages]
    return GenerationData(
        records=[
            {
                "id": r.id,
                "prompt": dict(r.prompt),
                "target": dict(r.target),
                "meta": {**r.meta, "old": r.original.get("en", "").strip()},
            }
            for r in chosen
        ],
        memory=memory,
        neighbours=[{"prompt": text, "lang": lang} for text, lang in neighbours],
        unrelated=[{"prompt": text, "lang": lang} for text, lang in dict.fromkeys(unrelated)],
        aliases=subject_aliases([*train, *pool], alias_languages),
        script_memory=script_memory(exclude=languages),
    )


def subject_aliases(records: Sequence[Any], languages: Sequence[str]) -> dict[str, dict[str, str]]:
    """An alias table of the records' subjects: ``{"country:FR": {"en": <the English prompts' name>, lang: CLDR
    name}}`` (`peft_mpn.data.countries.country_name`); empty without ``languages``."""
    from ..data.countries import country_name

    table: dict[str, dict[str, str]] = {}
    if not languages:
        return table
    for record in records:
        iso2, name = record.meta.get("country"), (record.meta.get("subject") or {}).get("en")
        if not iso2 or not name or f"country:{iso2}" in table:
            continue
        names = {lang: country_name(iso2, lang) for lang in languages if lang != "en"}
        table[f"country:{iso2}"] = {"en": name, **{lang: alias for lang, alias in names.items() if alias}}
    return table
