"""Generation edits the model can't represent are refused with a clear error, not an IndexError or a false success."""

from __future__ import annotations

import pytest

from conftest import lm_word_tokenizer, make_tiny_lm
from peft_mpn import CausalLMEditor


def test_a_prompt_longer_than_the_model_positions_is_a_clear_error():
    tokenizer = lm_word_tokenizer(bos=False)
    editor = CausalLMEditor(make_tiny_lm("gpt2", len(tokenizer)), tokenizer, ["en"], progress=False)  # 64 positions
    record = {"id": "long", "prompt": {"en": " ".join(["v1"] * 80)}, "target": {"en": " E1"}}
    with pytest.raises(ValueError, match=r"'long': prompt and target in 'en' are 81 tokens, more than the model's 64"):
        editor.edit(record)
    assert len(editor.collator.text_ids(" ".join(["v1"] * 80))) == 64  # memory texts are cut to the positions


def test_an_all_unknown_target_is_refused():
    tokenizer = lm_word_tokenizer()
    editor = CausalLMEditor(make_tiny_lm("llama", len(tokenizer)), tokenizer, ["en"], progress=False)
    record = {"id": "unk", "prompt": {"en": "v1 v2 v3"}, "target": {"en": " Zürich Genève"}}
    with pytest.raises(ValueError, match=r"'unk': field 'target' for 'en' .* tokenises to unknown tokens only"):
        editor.edit(record)
    assert editor.model.num_patches() == 0
