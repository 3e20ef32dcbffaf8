"""The peft-mpn command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from peft import get_peft_model

from conftest import make_tiny
from peft_mpn import MPNConfig, __version__
from peft_mpn.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"peft-mpn {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "examples:" in capsys.readouterr().out


def test_console_script_is_installed():
    beside_python = Path(sys.executable).with_name("peft-mpn")
    exe = str(beside_python) if beside_python.exists() else shutil.which("peft-mpn")
    assert exe, "pip install -e . should install the peft-mpn console script"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and __version__ in out.stdout


def test_inspect(tmp_path, capsys):
    model = get_peft_model(make_tiny("bert"), MPNConfig(languages=["en", "de"]))
    model.add_patch()
    model.add_patch()
    model.freeze_patches()
    model.save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patches"] == 2 and summary["frozen"] == 2 and summary["languages"] == ["en", "de"]
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
