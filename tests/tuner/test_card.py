"""The adapter model card, and push_to_hub with the Hub API faked (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from peft import get_peft_model

from conftest import make_tiny
from peft_mpn import MPNConfig
from peft_mpn.tuner.card import metrics_table


class FakeHubApi:
    """Stands in for transformers' shared HfApi: records the repo and the uploaded files' contents."""

    def __init__(self):
        self.repos, self.files, self.commits = [], {}, []

    def __call__(self, **kwargs):  # HfApi(library_name=...) returns this same recorder
        return self

    def create_repo(self, repo_id, private=None, token=None, exist_ok=False, **kwargs):
        self.repos.append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        for op in operations:
            self.files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
        self.commits.append((repo_id, commit_message))
        return "https://huggingface.co/fake/commit/0"


@pytest.fixture
def fake_hub(monkeypatch):
    import peft_mpn.tuner.hub

    api = FakeHubApi()
    monkeypatch.setattr(peft_mpn.tuner.hub, "HfApi", api)
    return api


def edited_model():
    config = MPNConfig(
        task_type="SEQ_CLS",
        languages=["en", "fr", "de"],
        metrics={"MPN": {"SR": 1.0, "GR fr": 0.97}, "T-Patcher": {"SR": 1.0, "GR fr": 0.85}},
    )
    model = get_peft_model(make_tiny("bert"), config)
    model.peft_config["default"].base_model_name_or_path = "intfloat/multilingual-e5-small"
    model.add_patch()
    model.freeze_patches()
    model.add_patch()
    return model


def test_push_to_hub_uploads_adapter_and_a_real_card(fake_hub):
    model = edited_model()
    model.push_to_hub("someone/capital-fixes")
    assert fake_hub.repos == ["someone/capital-fixes"]
    assert fake_hub.commits == [("someone/capital-fixes", "Upload MPN adapter (2 patches)")]
    assert set(fake_hub.files) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    card = fake_hub.files["README.md"].decode()
    assert "library_name: peft" in card
    assert "base_model: intfloat/multilingual-e5-small" in card
    assert "**Patches:** 2 (1 frozen)" in card
    assert "**Languages:** en, fr, de" in card
    assert "| MPN | 1 | 0.97 |" in card and "| T-Patcher | 1 | 0.85 |" in card
    usage = card.split("```python", 1)[1]
    assert usage.lstrip().startswith("import peft_mpn")
    assert "AutoModelForSequenceClassification" in usage
    assert b'"peft_type": "MPN"' in fake_hub.files["adapter_config.json"]


def test_card_saved_locally_parses_and_keeps_peft_metadata(tmp_path):
    model = edited_model()
    model.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft"
    assert "peft-mpn" in card.data.tags and "transformers" in card.data.tags
    assert sorted(card.data.language) == ["de", "en", "fr"]
    assert "- PEFT " in card.text
    model.save_pretrained(tmp_path)  # saving again rewrites, does not duplicate
    assert (tmp_path / "README.md").read_text().count("## Usage") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_metrics_table_flat_and_empty():
    assert metrics_table({}) == ""
    assert metrics_table({"SR": 0.5}).splitlines()[-1] == "| SR | 0.5 |"
