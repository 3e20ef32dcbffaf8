"""Registration of the MPN PEFT type."""

from __future__ import annotations

import subprocess
import sys

from peft import PeftConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import peft_mpn
from conftest import make_tiny
from peft_mpn import MPN, MPNConfig, MPNModel


def test_registered_once_and_idempotent():
    before = (len(PEFT_TYPE_TO_CONFIG_MAPPING), len(PEFT_TYPE_TO_TUNER_MAPPING))
    peft_mpn.register()
    peft_mpn.register()
    assert (len(PEFT_TYPE_TO_CONFIG_MAPPING), len(PEFT_TYPE_TO_TUNER_MAPPING)) == before
    assert PEFT_TYPE_TO_CONFIG_MAPPING["MPN"] is MPNConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["MPN"] is MPNModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING["MPN"] == "mpn_"
    assert peft_mpn.is_registered() and MPN == "MPN" and str(MPN) == "MPN"


def test_peft_config_from_pretrained_returns_mpn_config(tmp_path):
    model = get_peft_model(make_tiny("bert"), MPNConfig(languages=["en", "fr"]))
    model.add_patch()
    model.save_pretrained(tmp_path)
    assert '"peft_type": "MPN"' in (tmp_path / "adapter_config.json").read_text()
    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, MPNConfig)
    assert config.languages == ["en", "fr"] and config.patch_sizes == {"bert.encoder.layer.1": [1]}


def test_loading_without_import_fails_as_the_docs_say(tmp_path):
    """Without `import peft_mpn`, peft cannot know the MPN type: the documented KeyError."""
    model = get_peft_model(make_tiny("bert"), MPNConfig())
    model.save_pretrained(tmp_path)
    code = (
        "import sys\nfrom peft import PeftConfig\n"
        f"try:\n    PeftConfig.from_pretrained({str(tmp_path)!r})\n"
        "except KeyError as e:\n    print('KeyError', e)\n    sys.exit(0)\nsys.exit(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "KeyError 'MPN'" in result.stdout
    assert "import peft_mpn" in peft_mpn.tuner.registry.MISSING_IMPORT_HINT
