"""script_memory: unrelated CLDR texts in many scripts, never in an excluded (evaluated) language."""

from __future__ import annotations

import unicodedata

import pytest

from peft_mpn.data.script_memory import SCRIPT_POOL, script_memory


def _script(text: str) -> str:
    letter = next(ch for ch in text if ch.isalpha())
    return unicodedata.name(letter).split()[0]


def test_script_memory_covers_many_scripts_and_leaves_out_evaluated_languages():
    evaluated = ["en", "fr", "de", "es", "ru", "ar", "zh", "ja", "hi"]
    texts = script_memory(exclude=evaluated)
    langs = {t["lang"] for t in texts}
    assert langs == set(SCRIPT_POOL) - set(evaluated) and len(texts) == 4 * len(langs)
    assert len({_script(t["text"]) for t in texts}) == 22  # LATIN, CYRILLIC, DEVANAGARI, HANGUL, THAI, ...
    marathi = [t["text"] for t in texts if t["lang"] == "mr"]
    assert _script(marathi[0]) == "DEVANAGARI" and "," in marathi[1]  # months, weekdays, regions, scripts
    assert script_memory(exclude=SCRIPT_POOL) == []
    assert script_memory(languages=["ko"]) == script_memory(exclude=set(SCRIPT_POOL) - {"ko"})


def test_script_memory_refuses_an_unknown_locale():
    with pytest.raises(ValueError, match="not a CLDR locale"):
        script_memory(languages=["xx-nowhere"])
