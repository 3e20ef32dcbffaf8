"""An XFEVER-like multilingual fact-verification benchmark, built offline from real country facts.

Each (country, relation) yields two claims: a true one (SUPPORTS, label 1) with the real value and a false one
(REFUTES, label 0) with another country's value for the same relation, drawn deterministically from the seed and
preferably from the same UN sub-region (so that "The capital of France is Madrid" rather than "... is Suva"). Every
claim is rendered in every language its relation covers with the templates of ``templates.json``:

========== ============================================ ================================
relation   value source                                 languages
========== ============================================ ================================
capital    world-countries ``capital``                  en de es fr ru ar zh
continent  world-countries ``continent``                en de es fr ru ar zh
currency   CLDR legal tender + currency names (babel)   the 15 XNLI languages
language   CLDR official languages + names (babel)      the 15 XNLI languages
========== ============================================ ================================

Country names always come from CLDR (babel) so that one country reads the same across relations, with the fixes of
``templates.json`` (``Hong Kong`` rather than ``Hong Kong SAR China``). Splits are by country: no country is in two
splits, so test claims are about countries never seen in training.

Two views of the same claims:

* :func:`build_benchmark`: a ``datasets.DatasetDict`` with one row per claim per language.
* :func:`to_edit_records`: JSONL-ready edit records, one per (country, relation, truth value), with the claim in
  every language as parallel ``inputs``, English ``rephrases``, unrelated ``locality`` claims and the
  ``neighbours`` (other claims about the same country).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.checks import is_int
from .countries import RELATIONS, XNLI_LANGUAGES, Country, Fact, load_countries, relation_languages


if TYPE_CHECKING:
    import datasets


#: Label names, indexed by label id (REFUTES = 0, SUPPORTS = 1).
LABEL_NAMES: tuple[str, str] = ("REFUTES", "SUPPORTS")
#: The demo's benchmark: the currency and language relations, which cover the 15 XNLI languages; MPN trains on four
#: scripts (Latin, Cyrillic, Devanagari, Greek) and 11 languages are held out, Arabic, Chinese, Thai and Swahili
#: among them (issue 12: "hold out distant scripts").
DEMO: dict[str, list[str]] = {
    "relations": ["currency", "language"],
    "train_languages": ["en", "ru", "hi", "el"],
    "heldout_languages": ["fr", "de", "es", "bg", "tr", "vi", "sw", "ur", "th", "ar", "zh"],
}
#: How many code-switch languages the demo uses by default (``peft_mpn.data.aliases.default_code_switch``): 3 met
#: every target on the validation split, 6 cost twice the time and T-Patcher's neighbourhood (docs/benchmark.md).
DEMO_CODE_SWITCH = 3
#: The first demo's benchmark (capital and continent in 7 languages). The lifelong curve and the latency benchmarks
#: keep its base classifier, so their figures stay comparable across releases.
CLASSIC_DEMO: dict[str, list[str]] = {
    "relations": ["capital", "continent"],
    "train_languages": ["en", "fr", "de", "es"],
    "heldout_languages": ["ru", "ar", "zh"],
}

DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.6, "validation": 0.1, "test": 0.3}
DEFAULT_PREFIX = "query: "
COLUMNS: tuple[str, ...] = (
    "id",
    "group_id",
    "country",
    "country_name",
    "relation",
    "lang",
    "template",
    "text",
    "label",
    "value",
    "true_value",
    "value_key",
    "true_key",
    "split",
)

_FR_VOWELS = frozenset("aeiouàâäéèêëîïôöùûüæœAEIOUÀÂÄÉÈÊËÎÏÔÖÙÛÜÆŒ")
#: Turkish vowel -> the vowel of a suffix after it (4-way harmony: ı i u ü).
_TR_HARMONY = (
    dict.fromkeys("aıâ", "ı") | dict.fromkeys("eiî", "i") | dict.fromkeys("ouû", "u") | dict.fromkeys("öü", "ü")
)
_DE_ADJECTIVE_ENDINGS = ("sche", "liche", "igte")
_TR_LOWER = str.maketrans({"I": "ı", "İ": "i", "Â": "â", "Î": "î", "Û": "û", "Ö": "ö", "Ü": "ü"})


# --------------------------------------------------------------------------------------------------------------------
# Templates and grammar
# --------------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _default_templates() -> dict[str, Any]:
    return json.loads((resources.files("peft_mpn.data") / "templates.json").read_text(encoding="utf-8"))


def load_templates(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read the claim templates and grammar data.

    Args:
        path: A JSON file in the schema of the packaged ``templates.json``; None reads the packaged one.

    Returns:
        The parsed file: ``{"templates": {relation: {lang: {"claim", "claim_plural"?, "paraphrases"?}}},
        "grammar": {lang: {...}}}``.
    """
    if path is None:
        return _default_templates()
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _capitalize_first(text: str, lang: str) -> str:
    if not text or not text[0].islower():
        return text
    first = "İ" if (lang == "tr" and text[0] == "i") else text[0].upper()
    return first + text[1:]


def _turkish_genitive(name: str) -> str:
    """``Fransa`` -> ``Fransa'nın``, ``Çin`` -> ``Çin'in``, ``Peru`` -> ``Peru'nun`` (vowel harmony, apostrophe)."""
    lower = name.translate(_TR_LOWER).lower()
    vowels = [ch for ch in lower if ch in _TR_HARMONY]
    vowel = _TR_HARMONY[vowels[-1]] if vowels else "i"
    ends_with_vowel = bool(lower) and lower[-1] in _TR_HARMONY
    return f"{name}'{'n' if ends_with_vowel else ''}{vowel}n"


def _de_weak(name: str, *, final: bool = False) -> str:
    """German declension after a definite article: adjectives (``-ische``, ``-liche``, ``-igte``) take ``-en``; with
    ``final`` (dative plural) the last noun takes ``-n`` too (``Niederlande`` -> ``Niederlanden``)."""
    words = name.split(" ")
    out = []
    for i, word in enumerate(words):
        last = i == len(words) - 1
        adjective = not last and word.endswith(_DE_ADJECTIVE_ENDINGS)
        if adjective or (last and final and word.endswith(("e", "er", "el"))):
            word += "n"
        out.append(word)
    return " ".join(out)


@dataclass(frozen=True)
class _CountryForms:
    forms: dict[str, str]
    plural: bool


class _Renderer:
    """Renders claims from the templates, handling articles and cases per language."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.templates: dict[str, dict[str, dict[str, Any]]] = spec["templates"]
        self.grammar: dict[str, dict[str, Any]] = spec.get("grammar", {})

    def _g(self, lang: str) -> dict[str, Any]:
        return self.grammar.get(lang, {})

    def clean(self, text: str, lang: str) -> str:
        for old, new in self._g(lang).get("replace", {}).items():
            text = text.replace(old, new)
        return text

    def name(self, iso2: str, raw: str, lang: str) -> str:
        return self.clean(self._g(lang).get("names", {}).get(iso2, raw), lang)

    def country_forms(self, iso2: str, raw: str, lang: str) -> _CountryForms:
        g = self._g(lang)
        name = self.name(iso2, raw, lang)
        plural = False
        if lang == "en":
            country = f"the {name}" if iso2 in g.get("definite", ()) else name
            forms = {"country": country, "country_of": f"of {country}"}
            plural = iso2 in g.get("plural", ())
        elif lang == "fr":
            forms, plural = self._fr(iso2, name, g)
        elif lang == "de":
            forms, plural = self._de(iso2, name, g)
        elif lang == "es":
            forms, plural = self._es(iso2, name, g)
        else:
            forms = {"country": name, "country_of": name}
        forms["country_gen"] = g.get("genitive", {}).get(iso2) or (_turkish_genitive(name) if lang == "tr" else name)
        forms["country_name"] = name
        return _CountryForms(forms, plural)

    @staticmethod
    def _fr(iso2: str, name: str, g: Mapping[str, Any]) -> tuple[dict[str, str], bool]:
        elide = name[:1] in _FR_VOWELS or iso2 in g.get("elide_h", ())
        if iso2 in g.get("bare", ()):
            return {"country": name, "country_of": ("d'" if elide else "de ") + name}, False
        if iso2 in g.get("plural", ()):
            return {"country": f"les {name}", "country_of": f"des {name}"}, True
        if elide:
            return {"country": f"l'{name}", "country_of": f"de l'{name}"}, False
        head = name.replace("-", " ").split(" ")[0].lower()
        feminine = iso2 in g.get("feminine", ()) or (head.endswith("e") and iso2 not in g.get("masculine", ()))
        if feminine:
            return {"country": f"la {name}", "country_of": f"de la {name}"}, False
        return {"country": f"le {name}", "country_of": f"du {name}"}, False

    @staticmethod
    def _de(iso2: str, name: str, g: Mapping[str, Any]) -> tuple[dict[str, str], bool]:
        plural = iso2 in g.get("plural", ())
        if iso2 in g.get("forms", {}):
            return dict(g["forms"][iso2]), plural
        if plural:
            return {"country": f"die {_de_weak(name)}", "country_of": f"von den {_de_weak(name, final=True)}"}, True
        if iso2 in g.get("feminine", ()):
            return {"country": f"die {name}", "country_of": f"von der {_de_weak(name)}"}, False
        if iso2 in g.get("masculine", ()):
            return {"country": f"der {name}", "country_of": f"vom {_de_weak(name)}"}, False
        return {"country": name, "country_of": f"von {name}"}, False

    @staticmethod
    def _es(iso2: str, name: str, g: Mapping[str, Any]) -> tuple[dict[str, str], bool]:
        for key, article, of, plural in (
            ("masculine", "el", "del", False),
            ("feminine", "la", "de la", False),
            ("masculine_plural", "los", "de los", True),
            ("feminine_plural", "las", "de las", True),
        ):
            if iso2 in g.get(key, ()):
                return {"country": f"{article} {name}", "country_of": f"{of} {name}"}, plural
        return {"country": name, "country_of": f"de {name}"}, False

    def value_art(self, value: str, lang: str) -> str:
        g = self._g(lang)
        first = value.split(" ")[0]
        if lang == "fr":
            if first[:1] in _FR_VOWELS or first.lower() in g.get("value_elide_h_words", ()):
                return f"l'{value}"
            return ("la " if first.lower() in g.get("value_feminine_words", ()) else "le ") + value
        if lang == "es":
            return ("la " if first.lower() in g.get("value_feminine_words", ()) else "el ") + value
        if lang == "de":
            return self._de_value_art(value, g)
        return value

    @staticmethod
    def _de_value_art(value: str, g: Mapping[str, Any]) -> str:
        """``Japanischer Yen`` -> ``der Japanische Yen``; ``Britisches Pfund`` -> ``das Britische Pfund``."""
        words = value.split(" ")
        indeclinable = {"Schweizer"}
        gender = None
        out: list[str] = []
        i = 0
        while i < len(words) - 1 and words[i] not in indeclinable and words[i].endswith(("er", "es", "e")):
            word = words[i]
            ending = "er" if word.endswith("er") else "es" if word.endswith("es") else "e"
            gender = gender or {"er": "m", "es": "n", "e": "f"}[ending]
            out.append(word[:-1] if ending in ("er", "es") else word)
            i += 1
        out.extend(words[i:])
        if gender is None:
            head = words[i].split("-")[-1] if i < len(words) else words[-1]
            if i < len(words) - 1 and words[i] in indeclinable:
                head = words[i + 1].split("-")[-1]
            if head in g.get("value_feminine_words", ()):
                gender = "f"
            elif head in g.get("value_neuter_words", ()):
                gender = "n"
            else:
                gender = "m"
        return {"m": "der", "n": "das", "f": "die"}[gender] + " " + " ".join(out)

    def render(self, template: str, forms: Mapping[str, str], value: str, lang: str) -> str:
        value = self.clean(value, lang)
        text = template.format(**forms, value=value, value_art=self.value_art(value, lang))
        return _capitalize_first(text, lang)

    def claim(self, relation: str, lang: str, cf: _CountryForms, value: str) -> str:
        spec = self.templates[relation][lang]
        template = spec.get("claim_plural", spec["claim"]) if cf.plural else spec["claim"]
        return self.render(template, cf.forms, value, lang)

    def paraphrases(self, relation: str, cf: _CountryForms, value: str) -> list[str]:
        spec = self.templates[relation]["en"]
        templates = spec.get("paraphrases", [])
        if cf.plural:
            templates = spec.get("paraphrases_plural", templates)
        return [self.render(t, cf.forms, value, "en") for t in templates]


# --------------------------------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One claim about one country, rendered in every language of its relation.

    Attributes:
        country: ISO 3166-1 alpha-2 code.
        relation: Relation name.
        label: 1 (SUPPORTS) for the real value, 0 (REFUTES) for a swapped one.
        key: Language-independent key of the value used in the claim.
        true_key: Key of the real value.
        texts: Claim text per language, without prefix.
        values: The value used, per language.
        true_values: The real value, per language.
        names: The country's (cleaned) name per language.
        paraphrases: English paraphrases of the claim, without prefix.
        split: The split of the country.
        negatives: Hard negatives: the same country and relation with values of *training* countries other than
            both values that any claim about this country uses, so never an evaluation text. One dict (language ->
            text, without prefix) per value.
    """

    country: str
    relation: str
    label: int
    key: str
    true_key: str
    texts: dict[str, str]
    values: dict[str, str]
    true_values: dict[str, str]
    names: dict[str, str]
    paraphrases: tuple[str, ...]
    split: str
    negatives: tuple[dict[str, str], ...] = ()

    @property
    def id(self) -> str:
        """``{country}-{relation}-{true|false}``, e.g. ``FR-capital-true``; also the edit record id."""
        return f"{self.country}-{self.relation}-{'true' if self.label else 'false'}"


def _normalise_fractions(split_fractions: Mapping[str, float] | Sequence[float] | None) -> dict[str, float]:
    if split_fractions is None:
        fractions = dict(DEFAULT_SPLIT_FRACTIONS)
    elif isinstance(split_fractions, Mapping):
        fractions = {str(k): float(v) for k, v in split_fractions.items()}
    else:
        values = [float(v) for v in split_fractions]
        if len(values) != 3:
            raise ValueError("split_fractions as a sequence must be (train, validation, test)")
        fractions = dict(zip(("train", "validation", "test"), values))
    if not fractions or any(v < 0 for v in fractions.values()) or not math.isclose(sum(fractions.values()), 1.0):
        raise ValueError(f"split_fractions must be non-negative and sum to 1, got {fractions}")
    return fractions


def _split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder apportionment of ``n`` countries (deterministic, sums to ``n``)."""
    exact = {name: n * frac for name, frac in fractions.items()}
    sizes = {name: math.floor(x) for name, x in exact.items()}
    order = sorted(fractions, key=lambda name: (-(exact[name] - sizes[name]), list(fractions).index(name)))
    for name in order[: n - sum(sizes.values())]:
        sizes[name] += 1
    return sizes


def split_countries(
    countries: Sequence[Country],
    relations: Sequence[str],
    seed: int,
    fractions: Mapping[str, float],
    max_countries: int | None = None,
) -> dict[str, str]:
    """Assign countries to splits: a seeded shuffle, cut by the fractions (largest remainder).

    Args:
        countries: The countries (their ``facts`` decide which are complete).
        relations: With ``max_countries``, countries that have every one of these relations come first.
        seed: Seed of the shuffle; the same seed gives the same splits.
        fractions: ``{split: fraction}`` summing to 1 (see :func:`_normalise_fractions`).
        max_countries: Keep only this many countries (None: all).

    Returns:
        ISO code -> split name, for the kept countries.
    """
    order = sorted(c.iso2 for c in countries)
    random.Random(f"{seed}:split").shuffle(order)
    if max_countries is not None:
        by_iso = {c.iso2: c for c in countries}
        full = [iso for iso in order if all(rel in by_iso[iso].facts for rel in relations)]
        rest = [iso for iso in order if iso not in set(full)]
        order = (full + rest)[: max(0, int(max_countries))]
    split_of: dict[str, str] = {}
    start = 0
    for split, size in _split_sizes(len(order), fractions).items():
        for iso in order[start : start + size]:
            split_of[iso] = split
        start += size
    return split_of


def _pick_false_key(
    country: Country, fact: Fact, pool: Sequence[tuple[Country, Fact]], langs: Sequence[str], seed: int
) -> str | None:
    """Another country's value for the same relation: same sub-region first, then continent, then anywhere."""

    def ok(other: Country, candidate: Fact) -> bool:
        return (
            other.iso2 != country.iso2
            and candidate.key not in fact.also_true
            and all(candidate.values.get(lang) and candidate.values[lang] != fact.values[lang] for lang in langs)
        )

    tiers = (
        lambda other: bool(country.region) and other.region == country.region,
        lambda other: bool(country.continent) and other.continent == country.continent,
        lambda other: True,
    )
    rng = random.Random(f"{seed}:{country.iso2}:{fact.relation}:false")
    for in_tier in tiers:
        keys = sorted({cand.key for other, cand in pool if in_tier(other) and ok(other, cand)})
        if keys:
            return rng.choice(keys)
    return None


def _pick_negative_keys(
    country: Country, fact: Fact, used: set[str], pool: Sequence[Fact], langs: Sequence[str], n: int, seed: int
) -> list[str]:
    """Up to ``n`` values of other (training) countries for hard negatives: never a value ``used`` by a claim."""
    keys = sorted(
        {
            cand.key
            for cand in pool
            if cand.key not in used
            and cand.key not in fact.also_true
            and all(cand.values.get(lang) and cand.values[lang] != fact.values[lang] for lang in langs)
        }
    )
    rng = random.Random(f"{seed}:{country.iso2}:{fact.relation}:negatives")
    return rng.sample(keys, min(n, len(keys)))


def build_claims(
    languages: Sequence[str] = XNLI_LANGUAGES,
    relations: Sequence[str] = RELATIONS,
    seed: int = 0,
    split_fractions: Mapping[str, float] | Sequence[float] | None = None,
    max_countries: int | None = None,
    templates: Mapping[str, Any] | None = None,
    n_negatives: int = 3,
) -> list[Claim]:
    """Build every claim (true and false) for the requested languages and relations.

    The claims about a country do not depend on ``max_countries`` or on the split: false values are drawn from all
    countries with a generator seeded by ``(seed, country, relation)``.

    Args:
        languages: Language codes; each relation uses those it covers (see :data:`countries.RELATION_LANGUAGES`)
            and has a template for.
        relations: Relation names from :data:`countries.RELATIONS`.
        seed: Seed of the split shuffle and of the false values.
        split_fractions: ``{split: fraction}`` (or ``(train, validation, test)``) summing to 1; defaults to
            60/10/30.
        max_countries: Keep only this many countries (after the seeded shuffle, countries with every relation first),
            e.g. for fast tests.
        templates: Parsed templates (:func:`load_templates`); None uses the packaged ones.
        n_negatives: Hard negatives per claim (:attr:`Claim.negatives`), with values of countries of the first
            split (``train``).

    Returns:
        Claims sorted by split (in ``split_fractions`` order), country, relation, then true before false.

    Raises:
        ValueError: For an unknown relation or language, bad split fractions or no language to render.
    """
    if max_countries is not None and not is_int(max_countries, least=1):
        raise ValueError(f"max_countries must be an int >= 1 or None (all countries), got {max_countries!r}.")
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise ValueError(f"unknown relations {unknown}; choose from {RELATIONS}")
    fractions = _normalise_fractions(split_fractions)
    renderer = _Renderer(templates if templates is not None else load_templates())
    languages = list(dict.fromkeys(languages))
    supported = sorted({lang for rel in RELATIONS for lang in renderer.templates.get(rel, {})})
    unsupported = [lang for lang in languages if lang not in supported]
    if unsupported:
        raise ValueError(f"languages {unsupported} have no claim templates; choose from {supported}.")
    rel_langs = {
        rel: [lang for lang in relation_languages(rel, languages) if lang in renderer.templates.get(rel, {})]
        for rel in dict.fromkeys(relations)
    }
    rel_langs = {rel: langs for rel, langs in rel_langs.items() if langs}
    if not rel_langs:
        raise ValueError(f"no relation can be rendered in languages {languages}")

    countries = [c for c in load_countries(languages) if any(rel in c.facts for rel in rel_langs)]
    pools = {rel: [(c, c.facts[rel]) for c in countries if rel in c.facts] for rel in rel_langs}
    split_of = split_countries(countries, list(rel_langs), seed, fractions, max_countries)

    first_split = next(iter(fractions))
    train_pools = {rel: [f for c, f in pool if split_of.get(c.iso2) == first_split] for rel, pool in pools.items()}
    claims: list[Claim] = []
    for country in countries:
        if country.iso2 not in split_of:
            continue
        for rel, langs in rel_langs.items():
            fact = country.facts.get(rel)
            if fact is None:
                continue
            false_key = _pick_false_key(country, fact, pools[rel], langs, seed)
            forms = {lang: renderer.country_forms(country.iso2, country.names[lang], lang) for lang in langs}
            names = {lang: forms[lang].forms["country_name"] for lang in langs}
            true_values = {lang: renderer.clean(fact.values[lang], lang) for lang in langs}
            variants = [(1, fact)]
            if false_key is not None:
                false_fact = next(f for _, f in pools[rel] if f.key == false_key)
                variants.append((0, false_fact))
            negative_keys = _pick_negative_keys(
                country, fact, {fact.key, false_key or ""}, train_pools[rel], langs, n_negatives, seed
            )
            negatives = tuple(
                {lang: renderer.claim(rel, lang, forms[lang], neg.values[lang]) for lang in langs}
                for key in negative_keys
                for neg in [next(f for f in train_pools[rel] if f.key == key)]
            )
            for label, used in variants:
                texts = {lang: renderer.claim(rel, lang, forms[lang], used.values[lang]) for lang in langs}
                para = renderer.paraphrases(rel, forms["en"], used.values["en"]) if "en" in langs else []
                claims.append(
                    Claim(
                        country=country.iso2,
                        relation=rel,
                        label=label,
                        key=used.key,
                        true_key=fact.key,
                        texts=texts,
                        values={lang: renderer.clean(used.values[lang], lang) for lang in langs},
                        true_values=true_values,
                        names=names,
                        paraphrases=tuple(para),
                        split=split_of[country.iso2],
                        negatives=negatives,
                    )
                )
    split_rank = {name: i for i, name in enumerate(fractions)}
    rel_rank = {rel: i for i, rel in enumerate(RELATIONS)}
    claims.sort(key=lambda c: (split_rank[c.split], c.country, rel_rank[c.relation], -c.label))
    return claims


# --------------------------------------------------------------------------------------------------------------------
# Dataset view
# --------------------------------------------------------------------------------------------------------------------


def _features() -> Any:
    import datasets

    string = datasets.Value("string")
    feats = {name: string for name in COLUMNS}
    feats["label"] = datasets.ClassLabel(names=list(LABEL_NAMES))
    return datasets.Features(feats)


def _rows(claim: Claim, prefix: str, include_paraphrases: bool) -> Iterable[dict[str, Any]]:
    for lang, text in claim.texts.items():
        variants = [("claim", text)]
        if include_paraphrases and lang == "en":
            variants += [(f"paraphrase_{i + 1}", p) for i, p in enumerate(claim.paraphrases)]
        for template, body in variants:
            suffix = "" if template == "claim" else f"-{template}"
            yield {
                "id": f"{claim.id}-{lang}{suffix}",
                "group_id": claim.id,
                "country": claim.country,
                "country_name": claim.names[lang],
                "relation": claim.relation,
                "lang": lang,
                "template": template,
                "text": prefix + body,
                "label": claim.label,
                "value": claim.values[lang],
                "true_value": claim.true_values[lang],
                "value_key": claim.key,
                "true_key": claim.true_key,
                "split": claim.split,
            }


def build_benchmark(
    languages: Sequence[str] = XNLI_LANGUAGES,
    relations: Sequence[str] = RELATIONS,
    seed: int = 0,
    split_fractions: Mapping[str, float] | Sequence[float] | None = None,
    prefix: str = DEFAULT_PREFIX,
    max_countries: int | None = None,
    include_paraphrases: bool = False,
    templates: Mapping[str, Any] | None = None,
) -> datasets.DatasetDict:
    """Build the benchmark as a ``datasets.DatasetDict`` (one row per claim per language).

    Args:
        languages: Language codes (default: the 15 XNLI languages).
        relations: Relation names (default: capital, continent, currency, language).
        seed: Seed; the same seed gives identical output.
        split_fractions: ``{split: fraction}`` summing to 1 (default 60/10/30 train/validation/test), by country.
        prefix: Prepended to every text (``"query: "`` is the e5 convention; ``""`` for none).
        max_countries: Keep only this many countries (see :func:`build_claims`).
        include_paraphrases: Also add the English paraphrases as rows (``template`` = ``paraphrase_<k>``).
        templates: Parsed templates (:func:`load_templates`); None uses the packaged ones.

    Returns:
        A ``DatasetDict`` with one dataset per split (empty ones included) and the columns of :data:`COLUMNS`;
        ``label`` is a ``ClassLabel(["REFUTES", "SUPPORTS"])``.
    """
    import datasets

    fractions = _normalise_fractions(split_fractions)
    claims = build_claims(languages, relations, seed, fractions, max_countries, templates)
    features = _features()
    out = {}
    for split in fractions:
        rows = [row for claim in claims if claim.split == split for row in _rows(claim, prefix, include_paraphrases)]
        columns = {name: [row[name] for row in rows] for name in COLUMNS}
        out[split] = datasets.Dataset.from_dict(columns, features=features)
    return datasets.DatasetDict(out)


# --------------------------------------------------------------------------------------------------------------------
# Edit-record view
# --------------------------------------------------------------------------------------------------------------------


def to_edit_records(
    languages: Sequence[str] = XNLI_LANGUAGES,
    relations: Sequence[str] = RELATIONS,
    seed: int = 0,
    split_fractions: Mapping[str, float] | Sequence[float] | None = None,
    prefix: str = DEFAULT_PREFIX,
    max_countries: int | None = None,
    splits: Sequence[str] | None = None,
    n_locality: int = 3,
    templates: Mapping[str, Any] | None = None,
    locality_split: str | None = "validation",
    n_negatives: int = 3,
) -> list[dict[str, Any]]:
    """Build edit records, one per (country, relation, truth value).

    Schema of a record::

        {"id": "FR-capital-true",
         "inputs": {"en": "query: The capital of France is Paris.", "fr": "query: La capitale de la France ...", ...},
         "label": 1,
         "rephrases": {"en": ["query: Paris is the capital of France.", ...]},
         "locality": ["query: <claim about a country of the locality split>", ...],
         "neighbours": [{"inputs": {lang: text}, "label": 0}, ...],
         "negatives": {"en": ["query: The capital of France is Madrid.", ...], ...},
         "meta": {"country": "FR", "relation": "capital", "split": "train", "value": "Paris", "true_value": "Paris",
                  "value_key": "Paris", "true_key": "Paris"}}

    ``negatives`` are hard negatives for training (:attr:`Claim.negatives`): the same country and relation with
    values of training countries, never a value of any claim about the country, so never an evaluation text.
    ``neighbours`` are the other claims about the same country (the opposite-truth claim of the same relation first,
    then both claims of every other relation), so that metrics can check an edit does not fire on everything about
    one country. ``locality`` holds ``n_locality`` claims about other countries of ``locality_split``, each in a
    seeded random language of its relation. ``meta`` values are English.

    Locality claims come from a split that is never edited (validation by default; the experiment edits test claims
    and draws its memory from training claims). Drawing them from the edited split would count intended changes as
    locality failures: a test claim that is itself edited, or a translation of one, is *meant* to flip.

    Args:
        languages: Language codes; must include ``"en"`` (records are anchored on English).
        relations: Relation names.
        seed: Seed; the same seed gives identical records.
        split_fractions: As in :func:`build_benchmark`.
        prefix: Prepended to every text.
        max_countries: As in :func:`build_benchmark`.
        splits: Only return records of these splits (default: all, in split order).
        n_locality: Number of locality texts per record.
        templates: Parsed templates; None uses the packaged ones.
        locality_split: Split the locality claims come from; ``None`` uses each record's own split. Falls back to
            the record's own split when this split has no other country (tiny benchmarks).
        n_negatives: Hard negatives per record and language (0 for none).

    Returns:
        The records, JSON-serialisable.

    Raises:
        ValueError: If ``"en"`` is not among ``languages``.
    """
    if "en" not in languages:
        raise ValueError("edit records need English ('en') among the languages")
    known = _normalise_fractions(split_fractions)
    if locality_split is not None and locality_split not in known:
        raise ValueError(f"locality_split {locality_split!r} is not a split; use one of {sorted(known)} or None.")
    claims = build_claims(languages, relations, seed, split_fractions, max_countries, templates, n_negatives)
    by_country: dict[str, list[Claim]] = {}
    by_split: dict[str, list[Claim]] = {}
    for claim in claims:
        by_country.setdefault(claim.country, []).append(claim)
        by_split.setdefault(claim.split, []).append(claim)

    def inputs(claim: Claim) -> dict[str, str]:
        return {lang: prefix + text for lang, text in claim.texts.items()}

    records = []
    for claim in claims:
        if splits is not None and claim.split not in splits:
            continue
        same_country = [c for c in by_country[claim.country] if c is not claim]
        same_country.sort(key=lambda c: (c.relation != claim.relation,))  # stable: opposite truth first
        rng = random.Random(f"{seed}:{claim.id}:locality")
        others = [c for c in by_split.get(locality_split or claim.split, []) if c.country != claim.country]
        if not others:
            others = [c for c in by_split[claim.split] if c.country != claim.country]
        locality = []
        for other in rng.sample(others, min(n_locality, len(others))):
            lang = rng.choice(sorted(other.texts))
            locality.append(prefix + other.texts[lang])
        records.append(
            {
                "id": claim.id,
                "inputs": inputs(claim),
                "label": claim.label,
                "rephrases": {"en": [prefix + p for p in claim.paraphrases]},
                "locality": locality,
                "neighbours": [{"inputs": inputs(c), "label": c.label} for c in same_country],
                "negatives": {lang: [prefix + n[lang] for n in claim.negatives] for lang in claim.texts}
                if claim.negatives
                else {},
                "meta": {
                    "country": claim.country,
                    "relation": claim.relation,
                    "split": claim.split,
                    "value": claim.values["en"],
                    "true_value": claim.true_values["en"],
                    "value_key": claim.key,
                    "true_key": claim.true_key,
                },
            }
        )
    return records


def render_claims(
    relation: str,
    value_key: str,
    countries: Sequence[str],
    languages: Sequence[str],
    prefix: str = DEFAULT_PREFIX,
    templates: Mapping[str, Any] | None = None,
) -> list[dict[str, str]]:
    """The claim "the ``relation`` of C is ``value_key``" about each country C of ``countries``, in every language.

    Used to swap the subject of an edit: the same relation and value about other countries are the inputs a patch
    that learnt the value instead of the fact would fire on (see ``LifelongConfig.subject_negatives``). The claims
    are rendered whatever their truth (a country whose real value is ``value_key`` gets its true claim).

    Args:
        relation: Relation name.
        value_key: The value's language-independent key (``Fact.key``, a record's ``meta["value_key"]``).
        countries: ISO 3166-1 alpha-2 codes.
        languages: Languages to render; a claim leaves out those its relation, value or country lacks.
        prefix: Prepended to every text.
        templates: Parsed templates; None uses the packaged ones.

    Returns:
        One dict (language -> text) per country, in the order of ``countries``.

    Raises:
        ValueError: For an unknown relation, a value no country has for it, or an unknown country.
    """
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; choose from {RELATIONS}")
    renderer = _Renderer(templates if templates is not None else load_templates())
    known = {c.iso2: c for c in load_countries(languages)}
    fact = next(
        (c.facts[relation] for c in known.values() if relation in c.facts and c.facts[relation].key == value_key),
        None,
    )
    if fact is None:
        raise ValueError(f"no country has {relation} {value_key!r}: pass a Fact.key of that relation as value_key.")
    missing = [iso for iso in countries if iso not in known]
    if missing:
        raise ValueError(f"unknown countries {missing}: pass ISO 3166-1 alpha-2 codes.")
    langs = [lang for lang in relation_languages(relation, languages) if lang in renderer.templates.get(relation, {})]
    out = []
    for iso in countries:
        country = known[iso]
        out.append(
            {
                lang: prefix
                + renderer.claim(
                    relation, lang, renderer.country_forms(iso, country.names[lang], lang), fact.values[lang]
                )
                for lang in langs
                if fact.values.get(lang) and country.names.get(lang)
            }
        )
    return out


def validate_record(record: Mapping[str, Any], languages: Sequence[str] | None = None) -> None:
    """Check one edit record against the schema.

    Args:
        record: A record from :func:`to_edit_records` (or read back from JSONL).
        languages: If given, ``inputs`` must have exactly these languages.

    Raises:
        ValueError: Naming the first problem found.
    """

    def fail(why: str) -> None:
        raise ValueError(f"record {record.get('id')!r}: {why}")

    if not isinstance(record.get("id"), str) or not record["id"]:
        fail("'id' must be a non-empty string")
    if record.get("label") not in (0, 1):
        fail("'label' must be 0 or 1")
    inputs = record.get("inputs")
    if not isinstance(inputs, dict) or "en" not in inputs:
        fail("'inputs' must be a dict with an 'en' text")
    if not all(isinstance(t, str) and t.strip() for t in inputs.values()):
        fail("every input must be a non-empty string")
    if languages is not None and set(inputs) != set(languages):
        fail(f"inputs have languages {sorted(inputs)}, expected {sorted(languages)}")
    rephrases = record.get("rephrases")
    if not isinstance(rephrases, dict) or not all(
        isinstance(v, list) and all(isinstance(t, str) for t in v) for v in rephrases.values()
    ):
        fail("'rephrases' must map languages to lists of strings")
    locality = record.get("locality")
    if not isinstance(locality, list) or not all(isinstance(t, str) for t in locality):
        fail("'locality' must be a list of strings")
    for neighbour in record.get("neighbours", []):
        if not isinstance(neighbour.get("inputs"), dict) or neighbour.get("label") not in (0, 1):
            fail("every neighbour needs 'inputs' (dict) and 'label' (0 or 1)")
