"""peft-mpn editing metrics as an ``evaluate`` metric; every figure is computed by ``peft_mpn.metrics``.

``evaluate.load`` copies this script into its module cache and imports it from there, so it imports installed
packages only (no relative imports). Load it offline from its path::

    import evaluate
    from peft_mpn.benchmark.evaluate_module import METRIC_PATH

    metric = evaluate.load(METRIC_PATH)
    metric.compute(
        predictions=[1, 0, 1], references=[1, 1, 1], predictions_before=[1, 1, 0], languages=["en", "fr", "fr"]
    )
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from peft_mpn.editing import metrics as mpn_metrics


_DESCRIPTION = """\
Accuracy of a (possibly edited) classifier, and, given the predictions of the unedited model on the same inputs,
locality: the raw retain rate (share of inputs whose prediction did not change) next to Transformer-Patcher's
normalised figure (accuracy after / accuracy before). Given a language per input, every figure is also reported
per language, with the share of inputs fixed by the edits among those wrong before ("fixed").
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): Predicted class ids after the edits.
    references (list of int): Gold class ids.
    predictions_before (list of int, optional): Predicted class ids of the unedited model on the same inputs.
    languages (list of str, optional): The language of each input, for per-language figures.

Returns:
    accuracy (float): Share of predictions equal to the references (nan for no input).
    n (int): Number of inputs.
    With predictions_before: retain_rate, accuracy_before, accuracy_after, normalized, changed
        (see peft_mpn.metrics.locality).
    With languages: per_language, language -> {accuracy, n} (plus, with predictions_before, retain_rate,
        accuracy_before, normalized, changed, fixed, n_fixed).

Examples:
    >>> metric = evaluate.load(METRIC_PATH)
    >>> metric.compute(predictions=[1, 0], references=[1, 1], predictions_before=[1, 1])["retain_rate"]
    0.5
"""

_CITATION = """\
@inproceedings{huang2023transformer,
  title={Transformer-Patcher: One Mistake Worth One Neuron},
  author={Huang, Zeyu and Shen, Yikang and Zhang, Xiaofeng and Zhou, Jie and Rong, Wenge and Xiong, Zhang},
  booktitle={International Conference on Learning Representations},
  year={2023}
}
"""


def _figures(
    predictions: Sequence[int], references: Sequence[int], predictions_before: Sequence[int] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy": mpn_metrics.accuracy(predictions, references), "n": len(predictions)}
    if predictions_before is not None:
        loc = mpn_metrics.locality(predictions_before, predictions, references)
        out.update({key: loc[key] for key in ("retain_rate", "accuracy_before", "accuracy_after", "normalized")})
        out["changed"] = loc["changed"]
    return out


class MPNEditMetrics(evaluate.Metric):
    """Accuracy, locality (raw and normalised) and per-language figures of an edited classifier."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(
        self,
        predictions: Sequence[int],
        references: Sequence[int],
        predictions_before: Sequence[int] | None = None,
        languages: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        predictions = [int(p) for p in predictions]
        references = [int(r) for r in references]
        if predictions_before is not None:
            predictions_before = [int(p) for p in predictions_before]
            if len(predictions_before) != len(predictions):
                raise ValueError(
                    f"predictions_before has {len(predictions_before)} items but predictions {len(predictions)}."
                )
        out = _figures(predictions, references, predictions_before)
        if languages is not None:
            if len(languages) != len(predictions):
                raise ValueError(f"languages has {len(languages)} items but predictions {len(predictions)}.")
            per_language: dict[str, Any] = {}
            for lang in dict.fromkeys(languages):
                rows = [i for i, code in enumerate(languages) if code == lang]
                after = [predictions[i] for i in rows]
                labels = [references[i] for i in rows]
                before = None if predictions_before is None else [predictions_before[i] for i in rows]
                entry = _figures(after, labels, before)
                if before is not None:
                    gr = mpn_metrics.generalization({lang: before}, {lang: after}, labels)[lang]
                    entry.update(fixed=gr["fixed"], n_fixed=gr["n_fixed"])
                per_language[lang] = entry
            out["per_language"] = per_language
        return out
