"""The experiment's bookkeeping: which texts count for locality and neighbourhood locality."""

from __future__ import annotations

import pytest

from peft_mpn.benchmark.experiment import ExperimentConfig, neighbour_mask
from peft_mpn.data import to_edit_records
from peft_mpn.data.records import EditRecord


def test_neighbours_in_the_edit_set_are_left_out():
    records = [EditRecord.from_dict(r) for r in to_edit_records(languages=["en", "fr"], max_countries=12)]
    country = records[0].meta["country"]
    same = [r for r in records if r.meta["country"] == country]
    assert len(same) >= 3
    edits = same[:2]  # two claims about one country, both edited
    keep = neighbour_mask(edits, ["en", "fr"])
    for record, flags in zip(edits, keep):
        assert len(flags) == 2 * len(record.neighbours)
        other = edits[1] if record is edits[0] else edits[0]
        for i, neighbour in enumerate(record.neighbours):
            edited = neighbour["inputs"]["en"] == other.inputs["en"]
            assert flags[2 * i] == flags[2 * i + 1] == (not edited)
        assert sum(not f for f in flags) == 2  # exactly the other edit, in both languages


def test_locality_texts_never_come_from_the_edited_split():
    records = to_edit_records(languages=["en", "fr"], max_countries=40, splits=["test"])
    test_texts = {
        t
        for r in to_edit_records(languages=["en", "fr"], max_countries=40, splits=["test"])
        for t in r["inputs"].values()
    }
    assert records and not any(t in test_texts for r in records for t in r["locality"])


def test_config_validates_and_keys_sharpness():
    a, b = ExperimentConfig(), ExperimentConfig(sharpness=1.0)
    assert a.run_key() != b.run_key()
    assert a.base_key() == b.base_key()  # the base classifier does not depend on the patch unit
    with pytest.raises(ValueError, match="both training and held-out"):
        ExperimentConfig(train_languages=["en", "ru"], heldout_languages=["ru"])
    with pytest.raises(ValueError, match="n_negatives"):
        ExperimentConfig(n_negatives=-1)
    with pytest.raises(ValueError, match="sharpness"):
        ExperimentConfig(sharpness=0)
    with pytest.raises(ValueError, match="code_switch"):
        ExperimentConfig(code_switch="ja")
    with pytest.raises(ValueError, match="code_switch"):
        ExperimentConfig(code_switch=["en", "ja"])
    assert ExperimentConfig(code_switch=["ja"]).run_key() != a.run_key()
    # the benchmark's countries, hence its split, depend on the languages: so does the cached base
    assert ExperimentConfig(heldout_languages=["ru"]).base_key() != a.base_key()
