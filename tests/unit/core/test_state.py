"""The training loop's parts on their own: the state a checkpoint carries, early stopping, the
gradient-check schedule."""

from __future__ import annotations

import pytest
import torch

from core.callbacks import CallbackList, EpochRecord
from core.checkpoint import Checkpoint, CheckpointError
from core.data import load_dataset
from core.optim import FlatParameters, Schedule, make_optimizer
from core.spec import EarlyStoppingSpec, JobSpec, monitor_mode, parse_spec
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


def _state(spec: JobSpec, seed: int) -> TrainState:
    flat = FlatParameters(torch.nn.Linear(2, 3).double())
    opt = make_optimizer(spec.optimizer, flat, spec.regularization.weight_decay)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        flat.data.copy_(torch.randn(flat.data.shape, generator=g))
        for t in opt.state_tensors().values():
            t.copy_(torch.rand(t.shape, generator=g))
    opt.steps = seed
    return TrainState.start(spec, flat.params, opt, torch.device("cpu"))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_state_round_trips_through_a_checkpoint(optimizer: str) -> None:
    spec = parse_spec(
        {
            "dataset": "iris",
            "regularization": {"dropout": 0.2},
            "optimizer": {"name": optimizer, "schedule": {"kind": "plateau", "patience": 1}},
        }
    )
    state = _state(spec, 5)
    state.batch_rng.manual_seed(11)
    torch.randperm(5, generator=state.dropout_rng)
    record = EpochRecord(
        epoch=1, step=7, lr=0.1, seconds=1.0, samples_per_s=7.0, grad_norm=0.5, val={"loss": 0.3}
    )
    state.step = 7
    assert not state.end_epoch(record)
    worse = EpochRecord(
        epoch=2, step=9, lr=0.1, seconds=1.0, samples_per_s=7.0, grad_norm=0.5, val={"loss": 0.4}
    )
    state.step = 9
    assert not state.end_epoch(worse)
    assert state.schedule.rate == spec.optimizer.lr * 0.5  # the plateau reduced it
    saved = Checkpoint.from_bytes(state.to_checkpoint({"seed": 0}).to_bytes())
    other = _state(spec, 6)
    other.load_checkpoint(saved)
    assert (other.epoch, other.step, other.history, other.history_dicts) == (
        2,
        9,
        [record, worse],
        [record.to_dict(), worse.to_dict()],
    )
    assert all(torch.equal(a, b) for a, b in zip(other.params, state.params, strict=True))
    mine, theirs = other.optimizer.state_tensors(), state.optimizer.state_tensors()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert other.optimizer.steps == state.optimizer.steps
    assert other.schedule.state_dict() == state.schedule.state_dict()
    assert torch.equal(other.batch_rng.get_state(), state.batch_rng.get_state())
    assert torch.equal(other.dropout_rng.get_state(), state.dropout_rng.get_state())
    early, want = other.early, state.early
    assert (early.best_loss, early.best_epoch, early.bad_epochs) == (0.3, 1, 1)
    assert want.best_params is not None and early.best_params is not None
    assert all(torch.equal(a, b) for a, b in zip(early.best_params, want.best_params, strict=True))


def test_a_checkpoint_of_another_optimizer_is_refused() -> None:
    sgd = parse_spec({"dataset": "iris"})
    adam = parse_spec({"dataset": "iris", "optimizer": {"name": "adam"}})
    saved = Checkpoint.from_bytes(_state(sgd, 1).to_checkpoint({}).to_bytes())
    with pytest.raises(CheckpointError, match="another optimizer"):
        _state(adam, 2).load_checkpoint(saved)


def test_early_stopping_on_a_maximised_metric() -> None:
    es = EarlyStopping.from_spec(
        EarlyStoppingSpec(patience=2, monitor="val_accuracy", min_delta=0.01)
    )
    assert es.maximise
    p = [torch.zeros(1)]
    seq = [0.5, 0.8, 0.805, 0.7]  # 0.805 is within min_delta of 0.8: no improvement
    assert [es.update(e, v, p) for e, v in enumerate(seq, start=1)] == [False, False, False, True]
    assert (es.best_loss, es.best_epoch) == (0.8, 2)
    low = EarlyStopping.from_spec(EarlyStoppingSpec(monitor="val_accuracy", mode="min"))
    assert not low.maximise
    for monitor, mode in (("val_macro_f1", "max"), ("train_r2", "max"), ("val_mae", "min"),
                          ("val_rmse", "min"), ("train_loss", "min")):  # fmt: skip
        assert monitor_mode(monitor, None) == mode


def test_plateau_waits_patience_then_cooldown_and_stops_at_min_lr() -> None:
    spec = parse_spec(
        {
            "dataset": "iris",
            "optimizer": {
                "lr": 0.8,
                "schedule": {
                    "kind": "plateau",
                    "patience": 2,
                    "cooldown": 1,
                    "gamma": 0.5,
                    "min_lr": 0.15,
                    "warmup_epochs": 1,
                },
            },
        }
    )
    sched = Schedule(spec.optimizer)
    rates = []
    values = [9.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    for epoch, v in enumerate(values):
        rates.append(sched.lr(epoch))
        sched.observe(epoch, {"val_loss": v})
    # epoch 0 warms up (0.8/2) and is not observed; best 1.0 at epoch 1; two bad epochs
    # (2, 3) halve the rate; a cooldown epoch (4) does not count, then 5, 6 halve again …
    assert rates == [0.4, 0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.15]


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
