"""The experiment's bookkeeping: which texts count for locality and neighbourhood locality."""

from __future__ import annotations

import json

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


def test_the_validation_split_never_touches_a_test_country():
    from peft_mpn.benchmark.experiment import _split_data
    from peft_mpn.data import build_benchmark

    config = ExperimentConfig(
        relations=["capital"], train_languages=["en"], heldout_languages=["fr"], max_countries=60, split="validation"
    )
    common = {"languages": ["en", "fr"], "relations": ["capital"], "max_countries": 60, "seed": 0}
    bench = build_benchmark(**common)
    split_of = {row["country"]: split for split in ("train", "validation", "test") for row in bench[split]}
    records, memory, unrelated = _split_data(config, bench, lambda texts: [1] * len(texts), lambda _: None)
    assert records and {split_of[r.meta["country"]] for r in records} == {"validation"}
    truth = {r.inputs["en"]: r.label for r in (EditRecord.from_dict(x) for x in to_edit_records(**common))}
    # claims the base (always 1) gets wrong keep their label; those it gets right are flipped to 0
    assert all(r.label == 0 or truth[r.inputs["en"]] == 1 for r in records)
    pairs = [(r.meta["country"], r.meta["relation"]) for r in records]
    assert len(pairs) == len(set(pairs))  # one edit per country and relation: the other claims stay neighbours
    assert unrelated and {split_of[r["country"]] for r in unrelated} == {"train"}
    texts = {t for texts in memory.values() for t in texts}
    assert texts and not texts & {r["text"] for r in unrelated}  # locality claims are kept out of the memory
    test_texts = {row["text"] for row in bench["test"]}
    assert not texts & test_texts and not {r["text"] for r in unrelated} & test_texts
    with pytest.raises(ValueError, match="split"):
        ExperimentConfig(split="dev")
    with pytest.raises(ValueError, match=r"relation 'capital' has no claims in \['hi', 'el'"):
        ExperimentConfig(relations=["capital"])  # the demo's languages need currency or language


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
    # by default, code-switching in the first script-diverse languages that are not evaluated; [] turns it off
    assert a.code_switch == ["ja", "ko", "fa"]
    assert ExperimentConfig(code_switch=[]).code_switch == []
    # the benchmark's countries, hence its split, depend on the languages: so does the cached base
    assert ExperimentConfig(heldout_languages=["ar"]).base_key() != a.base_key()


def test_base_key_covers_the_training_data_and_the_versions(monkeypatch):
    import transformers

    config = ExperimentConfig()
    rows = [{"text": "query: a", "label": 1}, {"text": "query: b", "label": 0}]
    key = config.base_key(rows)
    assert key != config.base_key([*rows[:1], {"text": "query: b", "label": 1}])  # other data: another base
    assert key != config.base_key()
    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    assert key != config.base_key(rows)  # another library version: another base


def test_two_runs_print_the_same_table(tmp_path):
    """The baselines are seeded and the base is keyed: a second run (cached base) reproduces every figure."""
    from peft_mpn.benchmark.experiment import run_experiment
    from peft_mpn.benchmark.report import markdown_table
    from peft_mpn.editing.losses import EditConfig

    config = ExperimentConfig(
        relations=["capital"],
        train_languages=["en", "fr"],
        heldout_languages=["ru", "zh"],
        max_countries=30,
        n_edits=3,
        memory_size=60,
        methods=["lora", "ft"],
        base_train_layers=0,
        base_epochs=5,
        edit=EditConfig(patience=7, max_steps=50),
    )
    logs: list[str] = []
    tables, setups = [], []
    for run in ("a", "b"):
        results = run_experiment(config, tmp_path / run, cache_dir=tmp_path / "cache", progress=False, log=logs.append)
        for metrics in results["methods"].values():
            metrics.pop("seconds_per_edit")
        tables.append(markdown_table(results))
        setups.append(results["setup"]["base classifier"])
    assert json.dumps(tables[0]) == json.dumps(tables[1])
    assert setups[0].endswith("(trained in this run) in the peft-mpn cache") and "(cached)" in setups[1]
    assert setups[0].split()[0] == setups[1].split()[0]  # the same key
