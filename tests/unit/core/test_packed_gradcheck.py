"""The gradient validator per member of a pack: the packed engine's gradients of member k
(run in float64) against autograd and central differences on member k's own model."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from core.callbacks import Callback
from core.gradcheck import GradcheckFailed, GradcheckReport
from core.packed import PackedPass, train_packed
from core.spec import JobSpec, parse_spec
from core.train import TrainResult, train

BASE: dict[str, Any] = {
    "dataset": {"name": "wine", "seed": 1},
    "model": {"hidden": [16, 8], "activation": "sigmoid"},
    "optimizer": {"epochs": 3, "batch_size": 16},
    "regularization": {"early_stopping": {"enabled": False}},
    "gradcheck": {"every_steps": 5, "fd_samples": 4},
}


def specs() -> list[JobSpec]:
    return [
        parse_spec({**BASE, "seed": 1}),
        parse_spec(
            {
                **BASE,
                "seed": 2,
                "regularization": {
                    "dropout": 0.3,
                    "weight_decay": 0.05,
                    "early_stopping": {"enabled": False},
                },
            }
        ),
        parse_spec({**BASE, "seed": 3, "gradcheck": {"every_steps": 3, "max_batch": 5}}),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_member_is_checked_at_its_steps_and_passes(dtype: torch.dtype) -> None:
    members = specs()
    results = train_packed(members, dtype=dtype, chunk=2)
    for spec, result in zip(members, results, strict=True):
        assert isinstance(result, TrainResult)
        solo = train(spec, dtype=dtype)
        steps = [(r["step"], r["batch"]) for r in result.gradchecks]
        assert steps == [(r["step"], r["batch"]) for r in solo.gradchecks]
        assert len(steps) > 3  # checks during training, not only at the start
        for report in result.gradchecks:
            assert report["passed"] and report["tolerance"] == spec.gradcheck.tolerance
            assert report["max_rel_error"] <= spec.gradcheck.tolerance
            assert report["max_fd_rel_error"] <= spec.gradcheck.fd_tolerance
            assert all(t["fd_coordinates"] > 0 for t in report["tensors"])


def test_a_wrong_packed_gradient_fails_that_member_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The validator checks what the packed pass computes: a pass that gets the second
    member's ∇W⁽¹⁾ wrong (in the validator's float64 run) fails that member's check, and
    only that member's."""
    run = PackedPass.run

    def wrong_second_member(self: PackedPass, *args: Any) -> None:
        run(self, *args)
        if self.W[0].dtype == torch.float64 and self.W[0].shape[0] > 1:
            self.grad_w[0][1, 0, 0] += 1e-6

    monkeypatch.setattr(PackedPass, "run", wrong_second_member)
    members = [parse_spec({**BASE, "seed": k, "gradcheck": {"every_steps": 0}}) for k in range(3)]
    seen: list[list[GradcheckReport]] = [[], [], []]

    class Collect(Callback):
        def __init__(self, k: int) -> None:
            self.k = k

        def on_gradcheck(self, report: GradcheckReport) -> None:
            seen[self.k].append(report)

    results = train_packed(members, callbacks=[[Collect(k)] for k in range(3)])
    failed = results[1]
    assert isinstance(failed, GradcheckFailed) and failed.report.step == 0
    assert not failed.report.passed
    worst = max(failed.report.tensors, key=lambda t: t.autograd_rel)
    assert worst.name == "W1" and worst.autograd_rel > failed.report.tolerance
    assert [r.passed for r in seen[1]] == [False]
    for k in (0, 2):
        assert isinstance(results[k], TrainResult) and results[k].status == "completed"
        assert [r.passed for r in seen[k]] == [True]


def test_check_gradients_takes_the_gradients_under_test() -> None:
    from core.backprop import backprop
    from core.gradcheck import check_gradients

    g = torch.Generator().manual_seed(0)
    W = [
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.randn(2, 5, dtype=torch.float64),
    ]
    b = [torch.zeros(5, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    X = torch.randn(4, 3, generator=g, dtype=torch.float64)
    T = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0]), 2).to(torch.float64)
    terms = {"activation": "tanh", "loss": "cross_entropy", "weight_decay": 0.1}
    right = [t for pair in backprop(W, b, X, T, **terms) for t in pair]
    assert check_gradients(W, b, X, T, manual=right, **terms).passed
    wrong = [t.clone() for t in right]
    wrong[2][1, 4] += 1e-6  # W2
    report = check_gradients(W, b, X, T, manual=wrong, **terms)
    assert not report.passed and [t.name for t in report.tensors if not t.passed] == ["W2"]
    with pytest.raises(ValueError, match="shapes"):
        check_gradients(W, b, X, T, manual=right[:2], **terms)
