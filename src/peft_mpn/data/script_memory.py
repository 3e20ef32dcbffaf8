"""Unrelated texts in many scripts, from CLDR (babel): a memory that keeps patches silent on scripts they never saw.

A patch trained against a memory in its training languages only has never been told to stay silent on other
scripts. On Gemma 3 270M, a patch for India's capital trained on English and French fired on nearly every Hindi
prompt (docs/benchmark.md). These texts are CLDR's month, weekday, world-region and script names in many languages:
unrelated to any fact, offline, and in 22 scripts. Evaluated languages are left out by the caller
(``exclude``), so a held-out language stays unseen; its script may not be (Marathi and Nepali are written in
Devanagari, as Hindi is).

>>> texts = script_memory(exclude=["en", "fr"])
>>> sorted({t["lang"] for t in texts})[:3], len(texts) > 100
(['am', 'bg', 'bn'], True)
"""

from __future__ import annotations

from collections.abc import Sequence


#: Languages of :func:`script_memory`: 35 languages in 22 scripts (Latin, Cyrillic, Greek, Hebrew, Arabic,
#: Devanagari, Bengali, Gurmukhi, Gujarati, Tamil, Telugu, Kannada, Malayalam, Sinhala, Thai, Lao, Khmer, Myanmar,
#: Hangul, Georgian, Armenian, Ethiopic).
SCRIPT_POOL: tuple[str, ...] = (
    "it", "pt", "nl", "pl", "sv", "tr", "vi", "id", "sw",
    "uk", "bg", "sr", "mn", "el", "he", "fa", "ur",
    "mr", "ne", "bn", "pa", "gu", "ta", "te", "kn", "ml", "si",
    "th", "lo", "km", "my", "ko", "ka", "hy", "am",
)  # fmt: skip

#: CLDR's numeric world regions (World, Africa, Europe, ...): names of places that are not countries.
_REGIONS = ("001", "002", "019", "142", "150", "009", "005", "021", "013", "029", "030", "034", "035", "039", "145")


def script_memory(exclude: Sequence[str] = (), languages: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Four unrelated texts per language: its month names, weekday names, world-region names and script names.

    Args:
        exclude: Languages to leave out: those an experiment evaluates.
        languages: The languages (default :data:`SCRIPT_POOL`); each must be a CLDR locale.

    Returns:
        ``{"text", "lang"}`` dicts, languages in order.

    Raises:
        ValueError: A language CLDR does not know.
    """
    from babel import Locale, UnknownLocaleError

    skip = set(exclude)
    out = []
    for lang in languages if languages is not None else SCRIPT_POOL:
        if lang in skip:
            continue
        try:
            locale = Locale.parse(lang)
        except (UnknownLocaleError, ValueError) as err:
            raise ValueError(
                f"script_memory: {lang!r} is not a CLDR locale ({err}); use codes like 'mr' or 'ko'."
            ) from None
        months = locale.months["format"]["wide"]
        days = locale.days["format"]["wide"]
        regions = [locale.territories[code] for code in _REGIONS if code in locale.territories]
        scripts = [
            locale.scripts[code] for code in ("Latn", "Cyrl", "Arab", "Hans", "Deva", "Grek") if code in locale.scripts
        ]
        for names in (
            [months[i] for i in sorted(months)],
            [days[i] for i in (6, 0, 1, 2, 3, 4, 5) if i in days],
            regions,
            scripts,
        ):
            if names:
                out.append({"text": ", ".join(names), "lang": lang})
    return out
