"""A counterfactual multilingual generation benchmark, built offline from real country facts.

Each (country, relation) gives one counterfactual edit: a key-value prompt (``"Country: France\\nCapital:"``) in
every language, and as its target another country's value for the same relation, in that language's spelling (drawn
deterministically from the seed, preferably from the same UN sub-region, as the classification benchmark draws its
false claims). The record also carries:

* ``original``: the true answer per language (the fact the base model should know before the edit);
* ``rephrases``: the sentence forms of ``templates.json`` whose value ends the sentence (``"The capital of France
  is"``), per language;
* ``neighbours``: true facts that the edit must not change, as :class:`GenerationEditRecord`: the same country in
  the other relations, then other countries (same sub-region first) in the same relation;
* ``locality``: unrelated prompts (other countries, other relations) in every language, their languages in
  ``meta["locality_languages"]``.

========== ====================================================== =========================================
relation   values                                                 languages
========== ====================================================== =========================================
capital    world-countries; CLDR exemplar cities (time zones)     en fr de es ru ar zh; ja hi (143 capitals)
continent  world-countries; CLDR names of the UN M49 regions      every language with a prompt template
currency   CLDR legal tender and currency names (babel)           every language with a prompt template
language   CLDR official languages and language names (babel)     every language with a prompt template
========== ====================================================== =========================================

A fact is used when it has a value in every requested language, so every record has the same languages. Answers
start with a space except in languages written without spaces (``zh``, ``ja``): Gemma's SentencePiece tokenizer reads
``"Capital: Paris"`` as ``[..., ":", "▁Paris"]`` and ``"首都：巴黎"`` as ``[..., "：", "巴黎"]``; a target may be
several tokens (``" باريس"`` is two).

Splits are by country (60/10/30 train/validation/test by default, the seeded shuffle of the classification
benchmark), so tuning can use validation countries only. Neighbours and unrelated prompts of a record come from
another split (:data:`DEFAULT_PROBE_SPLITS`), so a stream that edits one split never edits its own probes.

The base model is weak: :func:`keep_known` keeps the facts it gets right, per language, given a callable that
checks them (the data layer holds no model code).
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path
from typing import Any

from .benchmark import _normalise_fractions, _pick_false_key, _Renderer, load_templates, split_countries
from .countries import (
    RELATIONS,
    Country,
    Fact,
    cldr_capital,
    continent_name,
    load_countries,
)
from .generation import GenerationEditRecord
from .validation import field_error, read_jsonl_records, record_id_of, text_map


#: The default languages: five scripts (Latin, Cyrillic, Arabic, Han/Kana, Devanagari).
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "es", "ru", "ar", "zh", "ja", "hi")
#: Split of a record -> split its neighbours and unrelated prompts come from (never its own).
DEFAULT_PROBE_SPLITS: dict[str, str] = {"train": "validation", "validation": "train", "test": "validation"}
COUNTERFACTUAL_FIELDS = ("id", "prompt", "target", "original", "rephrases", "locality", "neighbours", "meta")

#: A checker for :func:`keep_known`: a record of true facts -> whether the model produces the target, per language.
KnowsFn = Callable[[GenerationEditRecord], Mapping[str, bool]]


@lru_cache(maxsize=1)
def _default_generation_templates() -> dict[str, Any]:
    text = (resources.files("peft_mpn.data") / "generation_templates.json").read_text(encoding="utf-8")
    return json.loads(text)


def load_generation_templates(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read the prompt templates of the counterfactual benchmark.

    Args:
        path: A JSON file in the schema of the packaged ``generation_templates.json``; None reads the packaged one.

    Returns:
        ``{"prompts": {relation: {lang: template}}, "no_space": [lang, ...], "capitals": {lang: {iso2: name}},
        "unrelated": {lang: [prompt, ...]}}``, optionally ``"capitalize": [lang, ...]`` (languages whose answers
        get an upper-case first letter, as in a form: ``"Monnaie : Euro"``; none in the packaged file).
    """
    if path is None:
        return _default_generation_templates()
    return json.loads(Path(path).read_text(encoding="utf-8"))


def prompt_languages(templates: Mapping[str, Any] | None = None) -> list[str]:
    """The languages every relation has a prompt template in (the languages the builder accepts)."""
    prompts = (templates or load_generation_templates())["prompts"]
    common = set.intersection(*(set(by_lang) for by_lang in prompts.values()))
    return sorted(common)


def answer_text(value: str, lang: str, templates: Mapping[str, Any] | None = None) -> str:
    """An answer as it follows a prompt: ``" Paris"``, but ``"巴黎"`` in a language written without spaces."""
    no_space = (templates or load_generation_templates()).get("no_space", ())
    return value if lang in no_space else " " + value


def unrelated_prompts(languages: Sequence[str] = DEFAULT_LANGUAGES) -> dict[str, list[str]]:
    """General-knowledge prompts unrelated to countries, per language (for locality checks)."""
    unrelated = load_generation_templates()["unrelated"]
    return {lang: list(unrelated[lang]) for lang in languages if lang in unrelated}


# --------------------------------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CounterfactualEditRecord(GenerationEditRecord):
    """A generation edit with its true answer and the facts it must not change.

    It is a :class:`GenerationEditRecord` (``CausalLMEditor`` and its collator take it as is) with two more fields.

    Args:
        original: Language code -> the true answer before the edit (same languages and spacing as ``target``).
        neighbours: True facts the edit must not change (ids ``{country}-{relation}``; ``meta["kind"]`` is
            ``"same_country"`` or ``"same_relation"``). Check them with ``CausalLMEditor.evaluate`` before and after.

    Example:
        >>> rec = CounterfactualEditRecord.from_dict({"id": "FR-capital",
        ...     "prompt": {"en": "Country: France\\nCapital:"}, "target": {"en": " Rome"},
        ...     "original": {"en": " Paris"}})
        >>> rec.fact_record().text("en")
        'Country: France\\nCapital: Paris'
    """

    original: dict[str, str] = field(default_factory=dict)
    neighbours: list[GenerationEditRecord] = field(default_factory=list)

    @property
    def country(self) -> str | None:
        """The subject's ISO 3166-1 alpha-2 code (``meta["country"]``), if known."""
        return self.meta.get("country")

    @property
    def relation(self) -> str | None:
        """The relation (``meta["relation"]``), if known."""
        return self.meta.get("relation")

    @property
    def split(self) -> str | None:
        """The subject's split (``meta["split"]``), if known."""
        return self.meta.get("split")

    def fact_record(self) -> GenerationEditRecord:
        """The true fact: the same prompts and rephrases with :attr:`original` as the target.

        Raises:
            ValueError: If the record has no ``original``.
        """
        if not self.original:
            raise field_error(self.id, "original", "is empty; the true answers are needed to check the fact.")
        meta = {**self.meta, "kind": "original"}
        return GenerationEditRecord(self.id, dict(self.prompt), dict(self.original), dict(self.rephrases), [], meta)

    def restrict(self, languages: Iterable[str]) -> CounterfactualEditRecord:
        """A copy with only ``languages`` in ``prompt``, ``target``, ``original`` and ``rephrases``.

        Raises:
            ValueError: If English is dropped (it is the edit example).
        """
        keep = [lang for lang in self.prompt if lang in set(languages)]
        if "en" not in keep:
            raise field_error(self.id, "prompt", "would lose its English prompt; keep 'en' among the languages.")
        return replace(
            self,
            prompt={lang: self.prompt[lang] for lang in keep},
            target={lang: self.target[lang] for lang in keep},
            original={lang: self.original[lang] for lang in keep if lang in self.original},
            rephrases={lang: list(v) for lang, v in self.rephrases.items() if lang in keep},
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, languages: Iterable[str] | None = None) -> CounterfactualEditRecord:
        """Validate a dict (one JSONL line) and build a record.

        Raises:
            ValueError: Naming the record id and the field (see :meth:`GenerationEditRecord.from_dict`), or an
                ``original`` whose languages differ from the prompt's, or a bad neighbour.
            TypeError: If ``data`` is not a dict.
        """
        languages = list(languages) if languages is not None else None
        record_id = record_id_of(data, COUNTERFACTUAL_FIELDS, what="a counterfactual edit record")
        base = GenerationEditRecord.from_dict(
            {k: v for k, v in data.items() if k not in ("original", "neighbours")}, languages=languages
        )
        original: dict[str, str] = {}
        if data.get("original") is not None:
            known = set(languages) if languages is not None else None
            original = text_map(record_id, "original", data["original"], known, noun="true answer", entry="answer")
            if set(original) != set(base.prompt):
                problem = f"has languages {sorted(original)}; give one true answer per prompt language."
                raise field_error(record_id, "original", f"{problem} (prompt: {sorted(base.prompt)})")
        neighbours_data = data.get("neighbours") or []
        if not isinstance(neighbours_data, list):
            raise field_error(record_id, "neighbours", "must be a list of generation edit records (true facts).")
        neighbours = []
        for i, item in enumerate(neighbours_data):
            try:
                neighbours.append(GenerationEditRecord.from_dict(item, languages=languages))
            except (ValueError, TypeError) as exc:
                raise field_error(record_id, "neighbours", f"entry {i} is not a valid record: {exc}") from exc
        return cls(base.id, base.prompt, base.target, base.rephrases, base.locality, base.meta, original, neighbours)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict, without empty optional fields."""
        data = GenerationEditRecord(
            self.id, self.prompt, self.target, self.rephrases, self.locality, self.meta
        ).to_dict()
        if self.original:
            data["original"] = dict(self.original)
        if self.neighbours:
            data["neighbours"] = [n.to_dict() for n in self.neighbours]
        return data


def read_counterfactual_records(
    path: str | os.PathLike, *, languages: Iterable[str] | None = None
) -> list[CounterfactualEditRecord]:
    """Read counterfactual edit records from JSONL (write them with ``write_generation_records``).

    Raises:
        ValueError: With the file and line number, for bad JSON, a bad record or a duplicate id.
        FileNotFoundError: If the file does not exist.
    """
    return read_jsonl_records(path, partial(CounterfactualEditRecord.from_dict, languages=languages))


# --------------------------------------------------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------------------------------------------------


def _extend_fact(country: Country, fact: Fact, languages: Sequence[str], spec: Mapping[str, Any]) -> Fact | None:
    """The fact with a value in every language (CLDR cities and region names fill in what world-countries lacks)."""
    values: dict[str, str | None] = {}
    for lang in languages:
        value = fact.values.get(lang)
        if value is None and fact.relation == "capital":
            value = spec.get("capitals", {}).get(lang, {}).get(country.iso2) or cldr_capital(
                country.iso2, fact.key, lang
            )
        elif value is None and fact.relation == "continent":
            value = continent_name(fact.key, lang)
        values[lang] = value
    if not all(values.values()):
        return None
    return Fact(fact.relation, fact.key, values, fact.also_true)  # type: ignore[arg-type]


def counterfactual_countries(
    languages: Sequence[str] = DEFAULT_LANGUAGES,
    relations: Sequence[str] = RELATIONS,
    templates: Mapping[str, Any] | None = None,
) -> list[Country]:
    """Countries with their facts in every requested language (values only; nothing rendered).

    Args:
        languages: Language codes; each needs a prompt template for every relation.
        relations: Relation names from :data:`countries.RELATIONS`.
        templates: Parsed generation templates; None reads the packaged ones.

    Returns:
        Countries (world-countries order) with at least one of ``relations``, each fact valued in every language.

    Raises:
        ValueError: For an unknown relation or a language without prompt templates (the message lists those there
            are).
    """
    spec = templates if templates is not None else load_generation_templates()
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise ValueError(f"unknown relations {unknown}; choose from {list(RELATIONS)}.")
    missing = [(rel, lang) for rel in relations for lang in languages if lang not in spec["prompts"].get(rel, {})]
    if missing:
        rel, lang = missing[0]
        raise ValueError(
            f"language {lang!r} has no {rel!r} prompt template in the counterfactual benchmark; choose languages "
            f"from {prompt_languages(spec)} or add templates to generation_templates.json."
        )
    # World-countries languages are always loaded so that the capital/continent facts exist for extension.
    babel_langs = list(dict.fromkeys(languages))
    out = []
    for country in load_countries(babel_langs):
        facts = {}
        for rel in relations:
            fact = country.facts.get(rel)
            extended = _extend_fact(country, fact, babel_langs, spec) if fact is not None else None
            if extended is not None:
                facts[rel] = extended
        if facts:
            out.append(replace(country, facts=facts))
    return out


# --------------------------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rendered:
    prompt: dict[str, str]
    answers: dict[str, str]


class _Builder:
    def __init__(self, languages: Sequence[str], spec: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
        self.languages = list(languages)
        self.spec = spec
        self.renderer = _Renderer(claims)

    def name(self, country: Country, lang: str) -> str:
        return self.renderer.name(country.iso2, country.names[lang], lang)

    def prompt(self, country: Country, relation: str) -> dict[str, str]:
        prompts = self.spec["prompts"][relation]
        return {lang: prompts[lang].format(country=self.name(country, lang)) for lang in self.languages}

    def answers(self, fact: Fact) -> dict[str, str]:
        capitalize = set(self.spec.get("capitalize", ()))  # off in the packaged templates (see docs/causal-lm.md)
        out = {}
        for lang in self.languages:
            value = self.renderer.clean(fact.values[lang], lang)
            if lang in capitalize:
                value = value[:1].upper() + value[1:]
            out[lang] = answer_text(value, lang, self.spec)
        return out

    def rephrases(self, country: Country, relation: str) -> dict[str, list[str]]:
        """Sentence prompts from the claim templates whose value ends the sentence."""
        out: dict[str, list[str]] = {}
        for lang in self.languages:
            spec = self.renderer.templates.get(relation, {}).get(lang)
            if not spec:
                continue
            forms = self.renderer.country_forms(country.iso2, country.names[lang], lang)
            claim = spec.get("claim_plural", spec["claim"]) if forms.plural else spec["claim"]
            templates = [claim]
            if lang == "en":
                extra = spec.get("paraphrases_plural", spec.get("paraphrases", [])) if forms.plural else None
                templates += extra if extra is not None else spec.get("paraphrases", [])
            prompts = []
            for template in templates:
                body = template.rstrip(".。!！")
                if not body.endswith("{value}") or "{value" in body[: -len("{value}")]:
                    continue
                text = self.renderer.render(body[: -len("{value}")], forms.forms, "", lang).rstrip()
                if text and text not in prompts:
                    prompts.append(text)
            if prompts:
                out[lang] = prompts
        return out

    def fact(self, country: Country, relation: str, kind: str) -> GenerationEditRecord:
        meta = {"kind": kind, "country": country.iso2, "relation": relation}
        fact = country.facts[relation]
        return GenerationEditRecord(
            f"{country.iso2}-{relation}", self.prompt(country, relation), self.answers(fact), {}, [], meta
        )


def build_counterfactual_records(
    languages: Sequence[str] = DEFAULT_LANGUAGES,
    relations: Sequence[str] = RELATIONS,
    seed: int = 0,
    split_fractions: Mapping[str, float] | Sequence[float] | None = None,
    max_countries: int | None = None,
    splits: Sequence[str] | None = None,
    n_neighbours: int = 3,
    n_unrelated: int = 2,
    probe_splits: str | Mapping[str, str] | None = None,
    templates: Mapping[str, Any] | None = None,
) -> list[CounterfactualEditRecord]:
    """Build the counterfactual edit records, one per (country, relation).

    Args:
        languages: Language codes (default :data:`DEFAULT_LANGUAGES`, 9 languages in 5 scripts); must include
            ``"en"``; each needs a prompt template (see :func:`prompt_languages`).
        relations: Relation names (default: capital, continent, currency, language).
        seed: Seed of the splits, the counterfactual values and the probes; the same seed gives the same records.
        split_fractions: ``{split: fraction}`` (or ``(train, validation, test)``) summing to 1, by country
            (default 60/10/30).
        max_countries: Keep only this many countries (countries with every relation first), e.g. for tests.
        splits: Only return records of these splits (default: all, in split order).
        n_neighbours: Other countries per record whose fact of the same relation must not change (same sub-region
            first). The same country's other relations are always neighbours too.
        n_unrelated: Unrelated (other country, other relation) facts per record, each prompted in every language.
        probe_splits: Split the other-country neighbours and unrelated prompts come from: one name for all, or a
            map from a record's split to one; None uses :data:`DEFAULT_PROBE_SPLITS` (never the record's own split,
            so the probes of an edited split are never edited). A split without countries falls back to the record's
            own, other countries only.
        templates: Parsed generation templates (:func:`load_generation_templates`); None reads the packaged ones.

    Returns:
        Records sorted by split (in ``split_fractions`` order), country, then relation. ``meta`` holds ``country``,
        ``relation``, ``split``, ``subject`` (the country's name per language), ``new_key`` and ``true_key`` (the
        language-independent keys of the new and the true value) and ``locality_languages``.

    Raises:
        ValueError: For a language without prompt templates, an unknown relation or split, bad split fractions,
            a bad count, or languages without English.

    Example:
        >>> records = build_counterfactual_records(["en", "ja"], ["capital"], max_countries=20)
        >>> rec = records[0]
        >>> sorted(rec.prompt), rec.target["en"].startswith(" "), rec.target["ja"].startswith(" ")
        (['en', 'ja'], True, False)
    """
    languages = list(dict.fromkeys(languages))
    if "en" not in languages:
        raise ValueError("counterfactual records need English ('en') among the languages: it is the edit example.")
    for name, value in (("n_neighbours", n_neighbours), ("n_unrelated", n_unrelated)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    if max_countries is not None and (not isinstance(max_countries, int) or max_countries < 1):
        raise ValueError(f"max_countries must be an int >= 1 or None (all countries), got {max_countries!r}.")
    fractions = _normalise_fractions(split_fractions)
    if probe_splits is None:
        probe_of = {s: DEFAULT_PROBE_SPLITS.get(s, s) for s in fractions}
    elif isinstance(probe_splits, str):
        probe_of = dict.fromkeys(fractions, probe_splits)
    else:
        probe_of = {s: probe_splits.get(s, DEFAULT_PROBE_SPLITS.get(s, s)) for s in fractions}
    bad = sorted({p for p in probe_of.values() if p not in fractions})
    if bad:
        raise ValueError(f"probe_splits names {bad}, which are not splits; use {list(fractions)}.")
    spec = templates if templates is not None else load_generation_templates()
    relations = list(dict.fromkeys(relations))
    countries = counterfactual_countries(languages, relations, spec)
    # Splits come from every relation the languages have templates for, so that they do not depend on `relations`:
    # France is in the same split whether one asks for capitals only or for every relation.
    all_relations = [r for r in RELATIONS if all(lang in spec["prompts"].get(r, {}) for lang in languages)]
    everyone = counterfactual_countries(languages, all_relations, spec) if all_relations != relations else countries
    split_of = split_countries(everyone, all_relations, seed, fractions, max_countries)
    countries = [c for c in countries if c.iso2 in split_of]
    builder = _Builder(languages, spec, load_templates())
    pools = {rel: [(c, c.facts[rel]) for c in countries if rel in c.facts] for rel in relations}
    by_split: dict[str, list[Country]] = {}
    for country in countries:
        if country.iso2 in split_of:
            by_split.setdefault(split_of[country.iso2], []).append(country)

    records = []
    for country in countries:
        split = split_of.get(country.iso2)
        if split is None or (splits is not None and split not in splits):
            continue
        probes = [c for c in by_split.get(probe_of[split], []) if c.iso2 != country.iso2]
        if not probes:
            probes = [c for c in by_split[split] if c.iso2 != country.iso2]
        for rel in relations:
            fact = country.facts.get(rel)
            if fact is None:
                continue
            new_key = _pick_false_key(country, fact, pools[rel], languages, seed)
            if new_key is None:
                continue
            new_fact = next(f for _, f in pools[rel] if f.key == new_key)
            rng = random.Random(f"{seed}:{country.iso2}:{rel}:probes")
            neighbours = [
                builder.fact(country, other, "same_country")
                for other in relations
                if other != rel and other in country.facts
            ]
            same_rel = [c for c in probes if rel in c.facts]
            rng.shuffle(same_rel)
            same_rel.sort(key=lambda c: (c.region != country.region, c.continent != country.continent))
            neighbours += [builder.fact(c, rel, "same_relation") for c in same_rel[:n_neighbours]]
            pairs = [(c, r) for c in probes for r in relations if r != rel and r in c.facts]
            locality, locality_langs = [], []
            for other, other_rel in rng.sample(pairs, min(n_unrelated, len(pairs))):
                for lang, text in builder.prompt(other, other_rel).items():
                    locality.append(text)
                    locality_langs.append(lang)
            meta = {
                "country": country.iso2,
                "relation": rel,
                "split": split,
                "subject": {lang: builder.name(country, lang) for lang in languages},
                "new_key": new_key,
                "true_key": fact.key,
                "locality_languages": locality_langs,
            }
            records.append(
                CounterfactualEditRecord(
                    id=f"{country.iso2}-{rel}",
                    prompt=builder.prompt(country, rel),
                    target=builder.answers(new_fact),
                    rephrases=builder.rephrases(country, rel),
                    locality=locality,
                    meta=meta,
                    original=builder.answers(fact),
                    neighbours=neighbours,
                )
            )
    split_rank = {name: i for i, name in enumerate(fractions)}
    rel_rank = {rel: i for i, rel in enumerate(relations)}
    records.sort(key=lambda r: (split_rank[r.meta["split"]], r.meta["country"], rel_rank[r.meta["relation"]]))
    return records


# --------------------------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------------------------


def keep_known(
    records: Iterable[CounterfactualEditRecord],
    knows: KnowsFn,
    *,
    require: Sequence[str] = ("en",),
    min_languages: int = 1,
) -> list[CounterfactualEditRecord]:
    """Keep the facts the (base) model knows, in the languages it knows them.

    The base model is asked each record's true fact (:meth:`CounterfactualEditRecord.fact_record`); languages where
    it gets the fact wrong are dropped from the record, and records that lose a ``require`` language or keep fewer
    than ``min_languages`` are dropped.

    Args:
        records: Counterfactual records.
        knows: Record of true facts -> ``{lang: bool}``. With a ``CausalLMEditor``::

                lambda fact: {lang: c["generated"] for lang, c in editor.check(fact, base=True).items()}

            (``"generated"``: greedy decoding produces the whole true answer).
        require: Languages a kept record must have (default English, the edit example).
        min_languages: The fewest languages a kept record may have.

    Returns:
        The kept records, restricted to their known languages, in input order.
    """
    out = []
    for record in records:
        known = knows(record.fact_record())
        langs = [lang for lang in record.prompt if known.get(lang)]
        if all(lang in langs for lang in require) and len(langs) >= max(min_languages, 1) and "en" in langs:
            out.append(record.restrict(langs))
    return out


def one_per_country(
    records: Iterable[CounterfactualEditRecord], relations: Sequence[str] = RELATIONS
) -> list[CounterfactualEditRecord]:
    """One record per country: its first relation in ``relations`` order, so that no edit of a stream is a
    same-country neighbour of another edit. Records of other relations are dropped; input order is kept."""
    records = list(records)
    rank = {rel: i for i, rel in enumerate(relations)}
    best: dict[str, CounterfactualEditRecord] = {}
    for record in records:
        if record.relation not in rank:
            continue
        key = record.country or record.id
        if key not in best or rank[record.relation] < rank[best[key].relation]:
            best[key] = record
    chosen = {id(r) for r in best.values()}
    return [r for r in records if id(r) in chosen]


def language_counts(records: Iterable[GenerationEditRecord]) -> dict[str, int]:
    """How many records have a prompt in each language."""
    return dict(Counter(lang for record in records for lang in record.prompt))


def fact_texts(records: Iterable[CounterfactualEditRecord], languages: Sequence[str] | None = None) -> list[str]:
    """The true facts as texts (prompt + true answer), e.g. for an editor's memory of training countries."""
    return [
        record.prompt[lang] + record.original[lang]
        for record in records
        for lang in record.prompt
        if (languages is None or lang in languages) and lang in record.original
    ]


__all__ = [
    "COUNTERFACTUAL_FIELDS",
    "DEFAULT_LANGUAGES",
    "DEFAULT_PROBE_SPLITS",
    "CounterfactualEditRecord",
    "KnowsFn",
    "answer_text",
    "build_counterfactual_records",
    "counterfactual_countries",
    "fact_texts",
    "keep_known",
    "language_counts",
    "load_generation_templates",
    "one_per_country",
    "prompt_languages",
    "read_counterfactual_records",
    "unrelated_prompts",
]
