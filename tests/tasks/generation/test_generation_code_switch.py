"""Code-switched generation edits (``aliases`` + ``code_switch``): collator, T-Patcher and MPN on a tiny LM."""

from __future__ import annotations

import pytest

from conftest import LM_WORDS, lm_edit_records, lm_sentences, lm_translate, lm_word_tokenizer, make_tiny_lm
from peft_mpn import CausalLMEditor, EditConfig, GenerationEditRecord
from peft_mpn.tasks.generation.collator import GenerationEditCollator


# The first 20 prompt words are "names": the alias table writes each one as its 'de' form of the tiny model.
TABLE = {w: {"en": w, "de": f"{w}_de"} for w in LM_WORDS[:20]}


def test_collator_adds_code_switched_prompts_with_the_english_target():
    tokenizer = lm_word_tokenizer()
    memory = ["v1 v30 v31", "v40 v41", "v2 v3 v45"]
    collator = GenerationEditCollator(tokenizer, ["en", "fr"], memory, aliases=TABLE, code_switch=["de"])
    assert collator.languages == ["en", "fr", "en>de"]
    assert collator.memory == [*memory, "v1_de v30 v31", "v2_de v3_de v45"]  # texts naming an entity get a copy
    record = GenerationEditRecord.from_dict(
        {"id": "r", "prompt": {"en": "v1 v30 v2", "fr": "v1_fr v30_fr v2_fr"}, "target": {"en": " E1", "fr": " E2"}}
    )
    expanded = collator.expand(record)
    assert expanded.prompt["en>de"] == "v1_de v30 v2_de" and expanded.target["en>de"] == " E1"  # names only
    assert "en>de" not in record.prompt  # the record passed in is not changed
    batch = collator.build(record)
    assert batch["languages"] == ["en", "fr", "en>de"] and int(batch["edit_mask"].sum()) == 3
    plain = GenerationEditCollator(
        tokenizer, ["en"], memory, aliases=TABLE, code_switch=["de"], code_switch_memory=False
    )
    assert plain.memory == memory and plain.languages == ["en", "en>de"]
    assert GenerationEditCollator(tokenizer, ["en"], memory).expand(record) is record  # no code-switching: as it is
    with pytest.raises(ValueError, match="needs an alias table"):
        GenerationEditCollator(tokenizer, ["en"], code_switch=["de"])
    with pytest.raises(ValueError, match=r"\['ja'\] have no name in the alias table"):
        GenerationEditCollator(tokenizer, ["en"], aliases=TABLE, code_switch=["ja"])


@pytest.mark.parametrize("method", ["tpatcher", "mpn"])
def test_code_switched_prompts_are_trained_and_join_the_memory(method):
    tokenizer = lm_word_tokenizer()
    memory = [lm_translate(s, lang) for s in lm_sentences(100, seed=1) for lang in ("en", "fr")]
    editor = CausalLMEditor(
        make_tiny_lm("llama", len(tokenizer)),
        tokenizer,
        ["en", "fr"],
        memory,
        method=method,
        config=EditConfig(lr=3e-2),
        aliases=TABLE,
        code_switch=["de"],
        progress=False,
    )
    assert editor.languages == (["en", "en>de"] if method == "tpatcher" else ["en", "fr", "en>de"])
    switched = len(editor.collator.memory) - len(memory)
    assert switched > 0  # the memory's texts that name an entity, in 'de'
    records = [r for r in lm_edit_records(6, seed=3) if any(w in TABLE for w in r["prompt"]["en"].split())][:2]
    results = editor.edit_stream(records)
    assert all(r.success and r.correct["en>de"] for r in results), [r.correct for r in results]
    for record in records:
        prompt = editor.collator.expand(GenerationEditRecord.from_dict(record)).prompt["en>de"]
        assert prompt != record["prompt"]["en"]
        assert editor.generate([prompt], 2) == [record["target"]["en"].strip()]
        assert record["prompt"]["en"] + record["target"]["en"] in editor.collator.memory
        assert prompt + record["target"]["en"] in editor.collator.memory  # the code-switched prompt joined it too
