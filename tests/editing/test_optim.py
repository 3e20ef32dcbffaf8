"""The edit optimiser keeps its state where the parameters are (a CUDA step needs its step counters on the GPU)."""

from __future__ import annotations

import torch

from peft_mpn.editing.optim import LeanAdamW


def test_lean_adamw_state_lives_on_the_parameters_device():
    # "meta" stands in for a GPU here: no kernel runs in the constructor, and a CPU counter would be on the wrong
    # device (seen on an H200: "state_steps is on cpu, different from other tensors on cuda:0").
    params = [torch.nn.Parameter(torch.zeros(3, 4, device="meta")), torch.nn.Parameter(torch.zeros(4, device="meta"))]
    optimizer = LeanAdamW([{"params": params, "lr": 1e-2, "weight_decay": 0.0}])
    for exp_avgs, exp_avg_sqs, steps in optimizer.state:
        assert all(t.device.type == "meta" for t in (*exp_avgs, *exp_avg_sqs, *steps))
