"""Alias tables and code-switched text (peft_mpn.data.aliases)."""

from __future__ import annotations

import pytest

from peft_mpn.data.aliases import (
    check_alias_table,
    code_switch,
    code_switch_language,
    code_switched_inputs,
    is_code_switched,
)


TABLE = {
    "country:ZA": {"en": "South Africa", "ja": "南アフリカ", "he": "דרום אפריקה"},
    "continent:AF": {"en": "Africa", "ja": "アフリカ"},
    "currency:ZAR": {"en": "South African Rand", "ja": "南アフリカ ランド"},
}


def test_code_switch_replaces_whole_names_longest_first():
    text = "query: The official currency of South Africa is the South African Rand."
    assert code_switch(text, TABLE, "ja") == "query: The official currency of 南アフリカ is the 南アフリカ ランド."
    # "Africa" inside "South Africa" is not replaced on its own; a name missing in a language is left as it is
    assert code_switch(text, TABLE, "he") == "query: The official currency of דרום אפריקה is the South African Rand."
    assert code_switch("Africans in Africa", TABLE, "ja") == "Africans in アフリカ"  # whole words only
    assert code_switch("Nothing to see", TABLE, "ja") is None


def test_code_switched_inputs_fall_back_to_the_english_text():
    inputs = code_switched_inputs({"en": "South Africa is here"}, TABLE, ["ja", "ko"])
    assert inputs == {"en>ja": "南アフリカ is here", "en>ko": "South Africa is here"}
    assert code_switch_language("zh") == "en>zh" and is_code_switched("en>zh") and not is_code_switched("zh")


@pytest.mark.parametrize(
    ("table", "error", "match"),
    [
        (["South Africa"], TypeError, "alias table"),
        ({"ZA": "South Africa"}, TypeError, r"aliases\['ZA'\] must be a mapping"),
        ({"ZA": {"ja": "南アフリカ"}}, ValueError, "no English name"),
        ({"ZA": {"en": "South Africa", "ja": ""}}, ValueError, "is empty"),
        ({"ZA": {"en": "South Africa", "ja": 3}}, TypeError, "to names"),
        ({3: {"en": "x"}}, TypeError, "entity keys must be str"),
    ],
)
def test_an_alias_table_of_the_wrong_shape_is_refused(table, error, match):
    with pytest.raises(error, match=match):
        check_alias_table(table)


def test_benchmark_alias_table_names_the_benchmark_entities_in_other_locales():
    pytest.importorskip("babel")
    pytest.importorskip("world_countries")
    from peft_mpn.data import to_edit_records
    from peft_mpn.data.aliases import benchmark_alias_table

    languages = ["en", "fr"]
    table = benchmark_alias_table(["ja", "ko"], languages, ["currency"])
    assert check_alias_table(table) == table
    assert table["country:FR"]["ja"] == "フランス"
    record = next(r for r in to_edit_records(languages, ["currency"], max_countries=8) if r["label"] == 1)
    switched = code_switch(record["inputs"]["en"], table, "ko")
    assert switched is not None and switched != record["inputs"]["en"]
    assert switched.startswith("query: The official currency of ")  # the English template stays


def test_default_code_switch_skips_evaluated_languages():
    from peft_mpn.data.aliases import CODE_SWITCH_POOL, default_code_switch

    assert default_code_switch() == list(CODE_SWITCH_POOL[:3]) == ["ja", "ko", "fa"]
    assert default_code_switch(["en", "ja", "he"], n=4) == ["ko", "fa", "ta", "ka"]
    assert default_code_switch(CODE_SWITCH_POOL) == []
