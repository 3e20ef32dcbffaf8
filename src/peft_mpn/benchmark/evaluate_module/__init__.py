"""The editing metrics as a Hugging Face ``evaluate`` module, loadable offline from a local path.

``evaluate.load`` takes the path of the script file (a folder path only works when the folder and the script share
a name, which is not the case here), so use :data:`METRIC_PATH` or :func:`load`:

>>> import evaluate                                                          # doctest: +SKIP
>>> metric = evaluate.load(peft_mpn.evaluate_module.METRIC_PATH)            # doctest: +SKIP
>>> metric.compute(predictions=[1, 0], references=[1, 1], predictions_before=[1, 1])  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


#: Path of the ``evaluate`` script, for ``evaluate.load(METRIC_PATH)``.
METRIC_PATH: str = str(Path(__file__).with_name("mpn_edit_metrics.py"))


def load(**kwargs: Any) -> Any:
    """``evaluate.load(METRIC_PATH, **kwargs)``: the metric, from the local script, without any download."""
    import evaluate

    return evaluate.load(METRIC_PATH, **kwargs)


__all__ = ["METRIC_PATH", "load"]
