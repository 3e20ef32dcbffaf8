"""CausalLMEditor takes the counterfactual benchmark's records as they are: edit, neighbours, keep_known."""

from __future__ import annotations

from conftest import lm_edit_records, lm_sentences, lm_translate, lm_word_tokenizer, make_tiny_lm
from peft_mpn import CausalLMEditor, EditConfig
from peft_mpn.data.counterfactual import CounterfactualEditRecord, keep_known


def counterfactual(raw: dict, neighbour: dict, original: str) -> CounterfactualEditRecord:
    return CounterfactualEditRecord.from_dict(
        {
            **raw,
            "original": dict.fromkeys(raw["prompt"], original),
            "neighbours": [{**neighbour, "meta": {"kind": "same_relation"}}],
            "locality": [neighbour["prompt"]["en"]],
        }
    )


def test_a_counterfactual_record_edits_and_its_neighbours_evaluate():
    tokenizer = lm_word_tokenizer()
    model = make_tiny_lm("llama", len(tokenizer), seed=0)
    memory = [lm_translate(s, lang) for s in lm_sentences(100, seed=1) for lang in ("en", "fr")]
    editor = CausalLMEditor(model, tokenizer, ["en", "fr"], memory, config=EditConfig(lr=3e-2), progress=False)
    raw, neighbour = lm_edit_records(2, seed=3)
    # The "true" answers are what the base model generates, so the base knows them (as keep_known would select).
    base = editor.generate([raw["prompt"]["en"]], 2, base=True)[0]
    record = counterfactual(raw, neighbour, " " + base.strip())
    known = keep_known([record], lambda f: {k: c["generated"] for k, c in editor.check(f, base=True).items()})
    assert [r.id for r in known] == [record.id] and set(known[0].prompt) <= set(record.prompt)

    before = editor.evaluate(record.neighbours, rephrases=False)
    result = editor.edit(record)
    assert result.success and result.generated == {"en": True, "fr": True}
    after = editor.evaluate(record.neighbours, rephrases=False)
    assert [e["id"] for e in after] == [neighbour["id"]]
    assert set(after[0]["prompts"]) == set(before[0]["prompts"]) == {"en", "fr", "de"}
    assert editor.locality(record.locality)["n_tokens"] == 8
