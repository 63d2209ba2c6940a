"""The training loop's parts on their own: the state a checkpoint carries, early stopping, the
gradient-check schedule."""

from __future__ import annotations

import pytest
import torch

from core.callbacks import CallbackList, EpochRecord
from core.checkpoint import Checkpoint
from core.data import load_dataset
from core.spec import EarlyStoppingSpec, parse_spec
from core.state import EarlyStopping, TrainState
from core.train import GradientChecks, TrainingData, build_model


def test_early_stopping_counts_epochs_without_improvement_and_keeps_the_best() -> None:
    early = EarlyStopping.from_spec(EarlyStoppingSpec(patience=2, min_delta=0.1))
    params = [torch.zeros(2)]
    assert not early.update(1, 1.0, params)
    params[0].fill_(1.0)
    assert not early.update(2, 0.95, params)  # not 0.1 below the best: a bad epoch
    assert (early.best_epoch, early.bad_epochs) == (1, 1)
    assert not early.update(3, 0.5, params)  # better: kept, the count starts again
    assert (early.best_loss, early.best_epoch, early.bad_epochs) == (0.5, 3, 0)
    assert not early.update(4, None, params)  # no validation part: nothing happens
    params[0].fill_(2.0)
    assert not early.update(5, 0.6, params)
    assert early.update(6, 0.7, params)
    early.restore(params)
    assert torch.equal(params[0], torch.ones(2))


def test_disabled_early_stopping_tracks_the_best_but_never_stops_or_restores() -> None:
    early = EarlyStopping.from_spec(EarlyStoppingSpec(enabled=False, patience=1))
    params = [torch.zeros(1)]
    assert not early.update(1, 1.0, params)
    assert not any(early.update(e, 2.0, params) for e in range(2, 6))
    assert early.best_epoch == 1 and early.bad_epochs == 4 and early.best_params is None


def test_state_round_trips_through_a_checkpoint() -> None:
    spec = parse_spec({"dataset": "iris", "regularization": {"dropout": 0.2}})
    params = [torch.randn(3, 2), torch.randn(3)]
    state = TrainState.start(spec, params, torch.randn(9), torch.device("cpu"))
    state.batch_rng.manual_seed(11)
    torch.randperm(5, generator=state.dropout_rng)
    record = EpochRecord(
        epoch=1, step=7, lr=0.1, seconds=1.0, samples_per_s=7.0, grad_norm=0.5, val={"loss": 0.3}
    )
    state.step = 7
    assert not state.end_epoch(record)
    saved = Checkpoint.from_bytes(state.to_checkpoint({"seed": 0}).to_bytes())
    other = TrainState.start(
        spec, [torch.zeros(3, 2), torch.zeros(3)], torch.zeros(9), torch.device("cpu")
    )
    other.load_checkpoint(saved)
    assert (other.epoch, other.step, other.history, other.history_dicts) == (
        1,
        7,
        [record],
        [record.to_dict()],
    )
    assert all(torch.equal(a, b) for a, b in zip(other.params, state.params, strict=True))
    assert torch.equal(other.momentum, state.momentum)
    assert torch.equal(other.batch_rng.get_state(), state.batch_rng.get_state())
    assert torch.equal(other.dropout_rng.get_state(), state.dropout_rng.get_state())
    early, want = other.early, state.early
    assert (early.best_loss, early.best_epoch, early.bad_epochs) == (0.3, 1, 0)
    assert want.best_params is not None and early.best_params is not None
    assert all(torch.equal(a, b) for a, b in zip(early.best_params, want.best_params, strict=True))


@pytest.mark.parametrize(
    ("at_start", "every", "step", "first"),
    [
        (True, 5, 0, 0),  # before the first step
        (False, 5, 0, 5),
        (True, 5, 10, 10),  # resumed at a multiple: checked again there
        (True, 5, 12, 15),  # resumed between: the next multiple
        (True, 0, 0, 0),
        (True, 0, 12, -1),  # only at the start, and that was before
        (False, 0, 0, -1),
    ],
)
def test_gradient_check_schedule(at_start: bool, every: int, step: int, first: int) -> None:
    spec = parse_spec(
        {"dataset": "iris", "gradcheck": {"at_start": at_start, "every_steps": every}}
    )
    data = load_dataset(spec.dataset, seed=spec.seed)
    cpu = torch.device("cpu")
    tensors = TrainingData.encode(spec, data, dtype=torch.float32, device=cpu)
    model, _, _ = build_model(spec, data.n_features, tensors.width, dtype=torch.float32, device=cpu)
    checks = GradientChecks(spec, model, tensors, CallbackList([]), step=step)
    assert checks.next == first
    if first >= 0:
        X, T = tensors.X[:8], tensors.T[:8]
        assert checks.run(X, T, None, first) == (first + every if every else -1) == checks.next
        assert checks.reports[-1]["step"] == first and checks.reports[-1]["passed"]
