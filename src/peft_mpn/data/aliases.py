"""Alias tables and code-switched text: the same sentence with its entity names written in other languages.

An **alias table** maps an entity to its names per language, ``{entity: {lang: name}}``, for example
``{"FR": {"en": "France", "zh": "法国", "ja": "フランス"}}``. Every entry has an English name (``"en"``): that is the
string looked for in an English text. Users often have such tables (Wikidata labels); for countries, currencies and
languages CLDR (``babel``) has names in 100+ languages, and :func:`benchmark_alias_table` builds one for the
benchmark's entities.

A **code-switched** text keeps the English sentence and writes its entity names in another language
(``"The official currency of 日本 is the 欧元."``). Training a patch on such texts, next to the edit and its
translations, teaches its key that the script of the names does not matter; the key then fires on translations into
languages it never saw (see ``docs/concepts.md``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


#: Separator of code-switched pseudo-languages: ``"en>zh"`` is English text with the names in Chinese.
CODE_SWITCH_SEPARATOR = ">"


#: Languages whose CLDR names make good code-switched examples, most useful first: each writes in another script
#: (Japanese kana and kanji, Hangul, the Perso-Arabic script, Hebrew, Tamil, Georgian, Armenian, Amharic's Ge'ez,
#: Khmer, Sinhala). See :func:`default_code_switch`.
CODE_SWITCH_POOL: tuple[str, ...] = ("ja", "ko", "fa", "he", "ta", "ka", "hy", "am", "km", "si")


def default_code_switch(evaluated: Sequence[str] = (), n: int = 3) -> list[str]:
    """The first ``n`` languages of :data:`CODE_SWITCH_POOL` that are not in ``evaluated``.

    Code-switching with a language that is also evaluated would put that language's names into training, so an
    experiment that reports held-out languages leaves them out.

    Example:
        >>> default_code_switch(["en", "ko", "fa"])
        ['ja', 'he', 'ta']
    """
    return [lang for lang in CODE_SWITCH_POOL if lang not in set(evaluated)][:n]


def code_switch_language(lang: str, source: str = "en") -> str:
    """The pseudo-language code of ``source`` text with the names in ``lang``: ``code_switch_language("zh")`` is
    ``"en>zh"``."""
    return f"{source}{CODE_SWITCH_SEPARATOR}{lang}"


def is_code_switched(lang: str) -> bool:
    """Whether a language code is a code-switched pseudo-language (``"en>zh"``)."""
    return CODE_SWITCH_SEPARATOR in lang


def check_alias_table(table: Any, *, name: str = "aliases") -> dict[str, dict[str, str]]:
    """The alias table as plain dicts, checked.

    Args:
        table: ``{entity: {lang: name}}``; every entry needs a non-empty English name (``"en"``).
        name: How the table is named in errors (the argument that passed it).

    Returns:
        A copy of the table as ``dict[str, dict[str, str]]``.

    Raises:
        TypeError: If the table is not a mapping of str to mappings of str to str.
        ValueError: If an entry has no English name, or a name is empty.
    """
    shape = "{entity: {lang: name}}, e.g. {'FR': {'en': 'France', 'zh': '法国'}}"
    if not isinstance(table, Mapping):
        raise TypeError(f"{name} must be an alias table {shape}, not {type(table).__name__}.")
    out: dict[str, dict[str, str]] = {}
    for entity, names in table.items():
        if not isinstance(entity, str):
            raise TypeError(f"{name}: entity keys must be str, got {entity!r}; the shape is {shape}.")
        if not isinstance(names, Mapping):
            raise TypeError(
                f"{name}[{entity!r}] must be a mapping {{lang: name}}, not {type(names).__name__}; "
                f"the shape is {shape}."
            )
        for lang, alias in names.items():
            if not isinstance(lang, str) or not isinstance(alias, str):
                raise TypeError(
                    f"{name}[{entity!r}] must map language codes (str) to names (str), got {lang!r}: {alias!r}."
                )
            if not alias.strip():
                raise ValueError(f"{name}[{entity!r}][{lang!r}] is empty; drop the language or give the name.")
        if "en" not in names:
            raise ValueError(
                f"{name}[{entity!r}] has no English name ('en'): it is what code-switching looks for in English text."
            )
        out[entity] = dict(names)
    return out


def code_switch(text: str, table: Mapping[str, Mapping[str, str]], lang: str, source: str = "en") -> str | None:
    """``text`` with every entity name of ``source`` replaced by its name in ``lang``.

    Names are matched as whole words, longest first (so "South Africa" wins over "Africa"); an entity without a name
    in ``lang`` is left as it is.

    Returns:
        The code-switched text, or None when no name was replaced.
    """
    names = {entry[source]: entry[lang] for entry in table.values() if source in entry and lang in entry}
    found = [n for n in names if n and n in text]
    if not found:
        return None
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(n)}(?!\w)" for n in sorted(found, key=len, reverse=True)))
    switched, count = pattern.subn(lambda m: names[m.group(0)], text)
    return switched if count and switched != text else None


def code_switched_inputs(
    texts: Mapping[str, str], table: Mapping[str, Mapping[str, str]], languages: Iterable[str], source: str = "en"
) -> dict[str, str]:
    """``{"en>lang": code-switched text}`` for every ``lang`` whose names change the ``source`` text.

    A language with no alias in the text gets the ``source`` text itself, so every record has every pseudo-language
    (the training rows of a patch do not depend on which names a table happens to hold).
    """
    base = texts[source]
    return {code_switch_language(lang, source): code_switch(base, table, lang, source) or base for lang in languages}


def switched_copies(
    texts: Sequence[str], aliases: Mapping[str, Mapping[str, str]], languages: Sequence[str]
) -> list[str]:
    """A code-switched copy of each text that names an entity of ``aliases``, the ``languages`` taken in turn.

    Example:
        >>> table = {"FR": {"en": "France", "ja": "フランス", "ko": "프랑스"}}
        >>> switched_copies(["France is big.", "Water is wet.", "I like France."], table, ["ja", "ko"])
        ['フランス is big.', 'I like 프랑스.']
    """
    out = []
    for text in texts:
        switched = code_switch(text, aliases, languages[len(out) % len(languages)])
        if switched is not None:
            out.append(switched)
    return out


def check_code_switch(
    code_switch: Sequence[str], aliases: Mapping[str, Mapping[str, str]] | None
) -> tuple[list[str], dict[str, dict[str, str]] | None]:
    """A collator's ``code_switch`` languages and alias table, checked: ``(languages without repeats, table)``.

    Raises:
        TypeError: If ``code_switch`` is one string, or the table has the wrong shape.
        ValueError: If ``code_switch`` lists ``"en"``, has no table, or names a language the table has no name in.
    """
    if isinstance(code_switch, str):
        raise TypeError(f"code_switch must be a list of language codes like ['ja', 'ko'], not {code_switch!r}.")
    code_switch = list(dict.fromkeys(code_switch))
    if code_switch and aliases is None:
        raise ValueError("code_switch needs an alias table: pass aliases={entity: {lang: name}}.")
    if "en" in code_switch:
        raise ValueError(
            "code_switch lists 'en': code-switched examples write English text's names in *other* languages; "
            "drop 'en'."
        )
    table = check_alias_table(aliases, name="aliases") if aliases is not None else None
    if table is not None:
        known = {lang for names in table.values() for lang in names}
        unknown = [lang for lang in code_switch if lang not in known]
        if unknown:
            raise ValueError(
                f"code_switch languages {unknown} have no name in the alias table; the table has {sorted(known)}."
            )
    return code_switch, table


def benchmark_alias_table(
    languages: Sequence[str],
    benchmark_languages: Sequence[str] | None = None,
    relations: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, str]]:
    """An alias table of the benchmark's entities (countries and the values of ``relations``), from CLDR.

    Country, currency and language names come from CLDR (babel), in any locale it knows; capitals and continents from
    the benchmark's own translations where it has the language. English names are those of the benchmark's English
    claims, so :func:`code_switch` finds them. Only names are used: no claim text of any language.

    Args:
        languages: Languages of the aliases: any CLDR locale (``"ja"``, ``"ko"``, ``"he"``...), not only the
            benchmark's languages.
        benchmark_languages: The languages the benchmark is built with (they shape its false values); default the
            15 XNLI languages.
        relations: Relations whose values become entities (default: every relation).
        seed: The benchmark seed (it picks the false values, which are entities too).
    """
    from .benchmark import build_claims
    from .countries import RELATIONS, XNLI_LANGUAGES, country_name, currency_name, language_name

    lookup = {"currency": currency_name, "language": language_name}
    claims = build_claims(list(benchmark_languages or XNLI_LANGUAGES), list(relations or RELATIONS), seed)
    table: dict[str, dict[str, str]] = {}
    for claim in claims:
        country = table.setdefault(f"country:{claim.country}", {"en": claim.names["en"]})
        value = table.setdefault(f"{claim.relation}:{claim.key}", {"en": claim.values["en"]})
        for lang in languages:
            if lang == "en":
                continue
            alias = claim.names.get(lang) or country_name(claim.country, lang)
            if alias:
                country.setdefault(lang, alias)
            alias = claim.values.get(lang)
            if not alias and claim.relation in lookup:
                alias = lookup[claim.relation](claim.key, lang)
            if alias:
                value.setdefault(lang, alias)
    return table


__all__ = [
    "CODE_SWITCH_POOL",
    "CODE_SWITCH_SEPARATOR",
    "benchmark_alias_table",
    "check_alias_table",
    "check_code_switch",
    "code_switch",
    "code_switch_language",
    "code_switched_inputs",
    "default_code_switch",
    "is_code_switched",
    "switched_copies",
]
