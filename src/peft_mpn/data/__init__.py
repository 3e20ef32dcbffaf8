"""Offline multilingual data: an XFEVER-like country-facts benchmark, a counterfactual generation benchmark, and
loaders for XNLI / XFEVER.

The benchmark is built from real data shipped in Python packages (``world-countries`` and CLDR via ``babel``, both
in the ``demo`` extra), so it needs no download. ``datasets`` is imported only by the functions that return datasets.
"""

from __future__ import annotations

from ..utils.io import read_jsonl, write_jsonl
from .aliases import benchmark_alias_table, check_alias_table, code_switch
from .benchmark import (
    COLUMNS,
    DEFAULT_PREFIX,
    DEFAULT_SPLIT_FRACTIONS,
    LABEL_NAMES,
    Claim,
    build_benchmark,
    build_claims,
    load_templates,
    render_claims,
    to_edit_records,
    validate_record,
)
from .counterfactual import (
    DEFAULT_LANGUAGES,
    CounterfactualEditRecord,
    build_counterfactual_records,
    keep_known,
    load_generation_templates,
    one_per_country,
    read_counterfactual_records,
)
from .countries import (
    RELATION_LANGUAGES,
    RELATIONS,
    WORLD_COUNTRIES_LANGUAGES,
    XNLI_LANGUAGES,
    Country,
    Fact,
    load_countries,
    relation_languages,
)
from .hub import XFEVER_LANGUAGES, XNLI_HUB_NAME, load_xfever, load_xnli
from .negatives import add_subject_negatives
from .records import EditRecord, read_records, write_records
from .zsre import MZSRE_LANGUAGES, load_bizsre, load_mzsre, load_zsre_parallel


__all__ = [
    "benchmark_alias_table",
    "check_alias_table",
    "code_switch",
    "EditRecord",
    "add_subject_negatives",
    "read_records",
    "write_records",
    "COLUMNS",
    "DEFAULT_PREFIX",
    "DEFAULT_SPLIT_FRACTIONS",
    "LABEL_NAMES",
    "RELATIONS",
    "RELATION_LANGUAGES",
    "WORLD_COUNTRIES_LANGUAGES",
    "XFEVER_LANGUAGES",
    "XNLI_HUB_NAME",
    "XNLI_LANGUAGES",
    "Claim",
    "CounterfactualEditRecord",
    "DEFAULT_LANGUAGES",
    "build_counterfactual_records",
    "keep_known",
    "load_generation_templates",
    "one_per_country",
    "read_counterfactual_records",
    "Country",
    "Fact",
    "build_benchmark",
    "build_claims",
    "load_countries",
    "load_templates",
    "render_claims",
    "load_bizsre",
    "load_mzsre",
    "load_xfever",
    "load_zsre_parallel",
    "MZSRE_LANGUAGES",
    "load_xnli",
    "read_jsonl",
    "relation_languages",
    "to_edit_records",
    "validate_record",
    "write_jsonl",
]
