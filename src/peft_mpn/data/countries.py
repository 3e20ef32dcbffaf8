"""Real, offline country facts: `world-countries` (capitals, continents) and CLDR via `babel` (names, currencies,
official languages).

Nothing here touches the network. Two sources are combined, keyed by the ISO 3166-1 alpha-2 code:

* ``world-countries==1.0.0`` (MIT) ships ``world_countries/data/countries_{en,de,es,fr,ru,ar,ch}.json``: 247 entries
  with ``iso2``, ``capital``, ``continent`` and ``region`` translated into 7 languages (``ch`` is Chinese; it is
  exposed here as ``zh``). It gives the *capital* and *continent* relations.
* ``babel`` (CLDR) gives country names in every XNLI language, the currencies in use in a territory
  (``babel.numbers.get_territory_currencies``) with their localised names, and the official languages of a territory
  (``babel.languages.get_official_languages``) with their localised names. It gives the *currency* and *language*
  relations, and the country names of every relation (one consistent name per country and language).

A :class:`Fact` is one relation of one country: a language-independent ``key`` (the English capital name, the
continent's English name, the ISO 4217 or ISO 639 code), the value rendered in each language, and ``also_true``, the
keys that would make a claim true as well (a country's other official languages, other legal tenders), which false
claims must avoid.
"""

from __future__ import annotations

import datetime as _dt
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from typing import Any


#: The 15 XNLI languages (ISO 639-1).
XNLI_LANGUAGES: tuple[str, ...] = (
    *("ar", "bg", "de", "el", "en", "es", "fr", "hi"),
    *("ru", "sw", "th", "tr", "ur", "vi", "zh"),
)
#: The languages `world-countries` translates capitals and continents into (``ch`` renamed to ``zh``).
WORLD_COUNTRIES_LANGUAGES: tuple[str, ...] = ("en", "de", "es", "fr", "ru", "ar", "zh")
#: world-countries file suffix per ISO language code.
_WC_FILE_SUFFIX: dict[str, str] = {"en": "en", "de": "de", "es": "es", "fr": "fr", "ru": "ru", "ar": "ar", "zh": "ch"}
#: Currencies are those in use on this date (CLDR history), so that the facts do not change with the clock.
CURRENCY_DATE = _dt.date(2025, 1, 1)
#: The relations this module can produce, with the languages their values can come in.
RELATION_LANGUAGES: dict[str, tuple[str, ...]] = {
    "capital": WORLD_COUNTRIES_LANGUAGES,
    "continent": WORLD_COUNTRIES_LANGUAGES,
    "currency": XNLI_LANGUAGES,
    "language": XNLI_LANGUAGES,
}
RELATIONS: tuple[str, ...] = tuple(RELATION_LANGUAGES)

#: Capitals left out on purpose: the world-countries value is outdated or the capital is disputed, so a benchmark
#: should not call it SUPPORTS (nor use it as a false value elsewhere).
EXCLUDED_CAPITALS: dict[str, str] = {
    "BI": "world-countries says Bujumbura; the political capital moved to Gitega in 2019",
    "LK": "world-countries says Colombo; the official capital is Sri Jayawardenepura Kotte",
    "IL": "Jerusalem: status disputed internationally",
    "PS": "East Jerusalem: status disputed",
}
#: Corrections of individual world-countries strings: (iso2, language) -> capital.
CAPITAL_FIXES: dict[tuple[str, str], str] = {("IM", "en"): "Douglas"}  # the English file says "Douglas, Isle of Man"
#: Continents not used as values: only uninhabited territories are "in" Antarctica in world-countries.
EXCLUDED_CONTINENTS: frozenset[str] = frozenset({"Antarctica"})


@dataclass(frozen=True)
class Fact:
    """One relation of one country.

    Attributes:
        relation: ``"capital"``, ``"continent"``, ``"currency"`` or ``"language"``.
        key: Language-independent identity of the value (English capital or continent name, ISO 4217 currency code,
            ISO 639 language code). Two facts with the same key have the same value.
        values: The value rendered in each language this fact is available in.
        also_true: Keys for which the claim would be true as well (including ``key``); a false claim avoids them.
    """

    relation: str
    key: str
    values: dict[str, str]
    also_true: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Country:
    """A country or territory with its names and facts.

    Attributes:
        iso2: ISO 3166-1 alpha-2 code, the country's identity everywhere in this package.
        iso3: ISO 3166-1 alpha-3 code.
        names: CLDR (babel) name per language, uncleaned (the benchmark applies ``templates.json`` overrides).
        region: The world-countries UN sub-region in English (``""`` when unknown); false values are drawn from it.
        continent: The world-countries continent in English (``""`` when unknown).
        facts: The available facts per relation.
    """

    iso2: str
    iso3: str
    names: dict[str, str]
    region: str
    continent: str
    facts: dict[str, Fact] = field(default_factory=dict)


def _require(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:  # pragma: no cover - exercised only without the demo extra
        hint = "install the demo extra: pip install 'peft-mpn[demo]'"
        raise ImportError(f"peft_mpn.data needs `{module}`; {hint}") from exc


@lru_cache(maxsize=1)
def load_world_countries() -> dict[str, list[dict[str, Any]]]:
    """Read the raw world-countries JSON files.

    Returns:
        The list of country entries per ISO language code (``zh`` for the package's ``ch`` file), in file order.
    """
    _require("world_countries")
    root = resources.files("world_countries") / "data"
    return {
        lang: json.loads((root / f"countries_{suffix}.json").read_text(encoding="utf-8"))
        for lang, suffix in _WC_FILE_SUFFIX.items()
    }


def _babel() -> tuple[Any, Any, Any]:
    babel = _require("babel")
    return babel, _require("babel.numbers"), _require("babel.languages")


@cache
def _locale(lang: str) -> Any:
    babel, _, _ = _babel()
    return babel.Locale.parse(lang)


def country_name(iso2: str, lang: str) -> str | None:
    """CLDR name of a territory.

    Args:
        iso2: ISO 3166-1 alpha-2 code.
        lang: Language code.

    Returns:
        The localised name, or None where CLDR has none (e.g. ``AN``, the dissolved Netherlands Antilles).
    """
    return _locale(lang).territories.get(iso2)


def currency_name(code: str, lang: str) -> str | None:
    """CLDR name of a currency.

    Args:
        code: ISO 4217 code.
        lang: Language code.

    Returns:
        The localised name, or None where CLDR has no translation (babel then echoes the code).
    """
    _, numbers, _ = _babel()
    name = numbers.get_currency_name(code, locale=lang)
    return None if not name or name == code else name


def language_name(code: str, lang: str) -> str | None:
    """CLDR name of a language.

    Args:
        code: ISO 639 code, optionally with a script (``zh_Hant`` is looked up as ``zh``).
        lang: Language the name is wanted in.

    Returns:
        The localised name, or None where CLDR has none.
    """
    return _locale(lang).languages.get(code.split("_")[0])


def territory_currencies(iso2: str) -> list[str]:
    """Currencies that are legal tender in a territory on :data:`CURRENCY_DATE` (CLDR order)."""
    _, numbers, _ = _babel()
    return list(numbers.get_territory_currencies(iso2, CURRENCY_DATE, tender=True))


def official_languages(iso2: str, *, regional: bool = False) -> list[str]:
    """Official (including de facto official) languages of a territory, script subtags dropped, CLDR order.

    Args:
        iso2: ISO 3166-1 alpha-2 code.
        regional: Also include languages official only in a region of the territory.

    Returns:
        Distinct ISO 639 codes, most spoken first.
    """
    _, _, languages = _babel()
    codes = languages.get_official_languages(iso2, regional=regional, de_facto=True)
    out: list[str] = []
    for code in codes:
        base = code.split("_")[0]
        if base not in out:
            out.append(base)
    return out


#: world-countries continent (English) -> UN M49 region code; CLDR names the region in every language.
CONTINENT_REGIONS: dict[str, str] = {
    "Africa": "002",
    "Asia": "142",
    "Europe": "150",
    "North America": "003",
    "South America": "005",
    "Oceania": "009",
}


def _fold(text: str) -> str:
    """Case- and accent-insensitive form: ``Bogotá`` and ``Bogota`` match."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)).casefold()


def cldr_capital(iso2: str, english: str, lang: str) -> str | None:
    """The capital's name in ``lang`` from the CLDR exemplar cities of the territory's time zones.

    CLDR names the main city of every time zone in every locale; where that city is the capital (``Europe/Paris``
    for France, ``Asia/Tokyo`` for Japan), its localised name is the capital's. About 140 capitals are time-zone
    cities; others are not (Beijing is in ``Asia/Shanghai``, New Delhi in ``Asia/Kolkata``).

    Args:
        iso2: ISO 3166-1 alpha-2 code.
        english: The capital's English name (world-countries), matched case- and accent-insensitively against the
            English city of each of the territory's zones.
        lang: Language code.

    Returns:
        The localised name, or None where no zone city is the capital or CLDR has no name for it in ``lang``.
    """
    babel, _, _ = _babel()
    dates = _require("babel.dates")
    zones = babel.core.get_global("territory_zones").get(iso2, ())
    for zone in zones:
        if _fold(dates.get_timezone_location(zone, locale="en", return_city=True)) == _fold(english):
            city = (_locale(lang).time_zones.get(zone) or {}).get("city")
            if city:
                return city
    return None


def continent_name(english: str, lang: str) -> str | None:
    """CLDR name of a world-countries continent (``"Europe"`` -> ``"ヨーロッパ"`` in ``ja``), or None."""
    code = CONTINENT_REGIONS.get(english)
    return _locale(lang).territories.get(code) if code else None


def _all_have(values: dict[str, str | None], languages: Iterable[str]) -> bool:
    return all(values.get(lang) for lang in languages)


def _capital_fact(iso2: str, index: int, wc: dict[str, list[dict[str, Any]]]) -> Fact | None:
    if iso2 in EXCLUDED_CAPITALS:
        return None
    values = {lang: CAPITAL_FIXES.get((iso2, lang), (wc[lang][index].get("capital") or "").strip()) for lang in wc}
    if not _all_have(values, wc):
        return None
    return Fact("capital", values["en"], values, frozenset({values["en"]}))


def _continent_fact(index: int, wc: dict[str, list[dict[str, Any]]]) -> Fact | None:
    values = {lang: (wc[lang][index].get("continent") or "").strip() for lang in wc}
    if not _all_have(values, wc) or values["en"] in EXCLUDED_CONTINENTS:
        return None
    return Fact("continent", values["en"], values, frozenset({values["en"]}))


def _currency_fact(iso2: str, wc_code: str, languages: Sequence[str]) -> Fact | None:
    tender = territory_currencies(iso2)
    # Prefer the country's own currency (world-countries' code) when CLDR lists it as tender: Bhutan -> BTN, not INR.
    order = ([wc_code] if wc_code in tender else []) + [code for code in tender if code != wc_code]
    for code in order:
        values = {lang: currency_name(code, lang) for lang in languages}
        if _all_have(values, languages):
            also = set(tender) | ({wc_code} if wc_code else set())
            return Fact("currency", code, values, frozenset(also))  # type: ignore[arg-type]
    return None


def _language_fact(iso2: str, wc_codes: Sequence[str], languages: Sequence[str]) -> Fact | None:
    official = official_languages(iso2)
    for code in official:
        values = {lang: language_name(code, lang) for lang in languages}
        if _all_have(values, languages):
            # Everything that could count as official somewhere in the country is excluded from false values.
            also = set(official) | set(official_languages(iso2, regional=True)) | {c.split("_")[0] for c in wc_codes}
            return Fact("language", code, values, frozenset(also))  # type: ignore[arg-type]
    return None


@lru_cache(maxsize=8)
def _load_countries(languages: tuple[str, ...]) -> tuple[Country, ...]:
    wc = load_world_countries()
    english = wc["en"]
    for lang, entries in wc.items():
        if [e["iso2"] for e in entries] != [e["iso2"] for e in english]:  # pragma: no cover - data sanity
            raise ValueError(f"world-countries file for {lang!r} is not aligned with the English one")
    wc_langs = [lang for lang in languages if lang in WORLD_COUNTRIES_LANGUAGES]
    babel_langs = list(languages)
    countries: list[Country] = []
    for index, entry in enumerate(english):
        iso2 = entry["iso2"]
        names = {lang: country_name(iso2, lang) for lang in babel_langs}
        if not _all_have(names, babel_langs):
            continue  # not a CLDR territory (AN)
        facts: dict[str, Fact] = {}
        if wc_langs:
            sub = {lang: wc[lang] for lang in WORLD_COUNTRIES_LANGUAGES}
            capital = _capital_fact(iso2, index, sub)
            continent = _continent_fact(index, sub)
            for fact in (capital, continent):
                if fact is not None:
                    facts[fact.relation] = fact
        currency = _currency_fact(iso2, entry.get("currency") or "", babel_langs)
        language = _language_fact(iso2, entry.get("languages") or [], babel_langs)
        for fact in (currency, language):
            if fact is not None:
                facts[fact.relation] = fact
        countries.append(
            Country(
                iso2=iso2,
                iso3=entry.get("iso3", ""),
                names=names,  # type: ignore[arg-type]
                region=(entry.get("region") or "").strip(),
                continent=(entry.get("continent") or "").strip(),
                facts=facts,
            )
        )
    return tuple(countries)


def load_countries(languages: Sequence[str] = XNLI_LANGUAGES) -> list[Country]:
    """Load every country with its names and facts.

    A country is kept when CLDR names it in every requested language. A fact is kept when its value exists in every
    language that relation supports (``capital``/``continent``: the 7 world-countries languages, whatever
    ``languages`` says, so the set of facts does not depend on the request; ``currency``/``language``: every
    requested language).

    Args:
        languages: Language codes the names (and babel-based values) must exist in.

    Returns:
        Countries in world-countries order (alphabetical by English name), 246 for the default languages.
    """
    return list(_load_countries(tuple(dict.fromkeys(languages))))


def relation_languages(relation: str, languages: Sequence[str] = XNLI_LANGUAGES) -> list[str]:
    """Languages a relation's claims come in, in the order of ``languages``.

    Args:
        relation: A name from :data:`RELATIONS`.
        languages: The requested languages.

    Returns:
        The requested languages the relation's values exist in.

    Raises:
        KeyError: For an unknown relation.
    """
    supported = RELATION_LANGUAGES[relation]
    return [lang for lang in dict.fromkeys(languages) if lang in supported]
