"""A checkpoint handed to the tracking buffer is a snapshot: training going on after it
changes none of its tensors, the optimizer's state included (resume stays bit-identical)."""

from __future__ import annotations

import torch

from core.checkpoint import Checkpoint
from workers.tracking.buffer import _snapshot


def test_the_snapshot_owns_every_tensor_of_the_optimizer_state() -> None:
    live = {"exp_avg": torch.ones(3), "exp_avg_sq": torch.ones(3)}
    params = [torch.ones(2)]
    ckpt = Checkpoint(
        spec={},
        epoch=1,
        step=2,
        params=params,
        momentum=[],
        batch_rng=torch.Generator().get_state(),
        dropout_rng=torch.Generator().get_state(),
        optimizer=live,
        optimizer_steps=2,
    )
    snap = _snapshot(ckpt)
    for t in (*live.values(), *params):
        t.add_(1.0)  # training goes on
    assert all(torch.equal(t, torch.ones(3)) for t in snap.optimizer.values())
    assert torch.equal(snap.params[0], torch.ones(2)) and snap.optimizer_steps == 2
