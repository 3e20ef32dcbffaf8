"""fit_key: a logistic key of an edit's inputs against the memory, in the input's own coordinates."""

from __future__ import annotations

import pytest
import torch

from peft_mpn.editing.keyfit import fit_key


def test_fitted_key_fires_on_the_positives_only_and_sets_the_lowest_to_the_edit_activation():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    offset = torch.randn(16, generator=g) * 5  # a common component far larger than the signal
    negatives = torch.randn(300, 16, generator=g) + offset
    positives = torch.randn(4, 16, generator=g) * 0.3 + offset + 3 * direction
    key, bias = fit_key(positives, negatives, edit_activation=1.0)
    assert key.shape == (16,) and bias.shape == ()
    scores = positives @ key + bias
    assert torch.isclose(scores.min(), torch.tensor(1.0), atol=1e-4)
    assert (negatives @ key + bias).max() < 0
    # unseen inputs of the positives' kind fire, unseen negatives stay silent
    assert ((torch.randn(50, 16, generator=g) * 0.3 + offset + 3 * direction) @ key + bias > 0).float().mean() > 0.9
    assert ((torch.randn(50, 16, generator=g) + offset) @ key + bias < 0).float().mean() > 0.9


def test_fit_key_is_deterministic_and_works_in_bfloat16():
    g = torch.Generator().manual_seed(1)
    negatives, positives = torch.randn(100, 8, generator=g), torch.randn(2, 8, generator=g) + 2
    first, again = fit_key(positives, negatives), fit_key(positives.bfloat16(), negatives.bfloat16())
    assert first[0].dtype == torch.float32 and torch.allclose(first[0], fit_key(positives, negatives)[0])
    assert torch.allclose(first[0], again[0], atol=0.2, rtol=0.2)  # bfloat16 inputs are only rounded


def test_fit_key_says_what_is_wrong():
    with pytest.raises(ValueError, match="one width"):
        fit_key(torch.zeros(2, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least one positive"):
        fit_key(torch.zeros(0, 3), torch.zeros(5, 3))
