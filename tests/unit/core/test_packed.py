"""The packed engine: member k of a pack is the same training as its spec trained alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.callbacks import Callback, EpochRecord
from core.checkpoint import Checkpoint, CheckpointError
from core.gradcheck import GradcheckFailed
from core.packed import PackIncompatible, pack_key, packable, train_packed
from core.spec import JobSpec, parse_spec
from core.train import Diverged, TrainResult, train

F64 = torch.float64


def make_spec(base: dict[str, Any], **changes: Any) -> JobSpec:
    """``base`` with sections updated by ``changes`` (a dict merges into its section)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_spec(raw)


def rel_errors(a: TrainResult, b: TrainResult) -> list[float]:
    """‖a − b‖ / ‖b‖ for each parameter tensor (0 when both are 0)."""
    out = []
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        x, y = x.detach(), y.detach()
        scale = float(torch.linalg.vector_norm(y))
        diff = float(torch.linalg.vector_norm(x - y))
        out.append(diff / scale if scale else diff)
    return out


def assert_same_training(
    packed: Any, solo: TrainResult, tol: float = 1e-9, *, checks_from: int = 0
) -> None:
    """Same steps, epochs, status, records' steps and rates, gradient checks (those of a
    run resumed at step ``checks_from`` onwards) and parameters within ``tol``."""
    assert isinstance(packed, TrainResult), packed
    assert packed.engine == "packed"
    assert (packed.steps, packed.epochs, packed.status, packed.best_epoch) == (
        solo.steps,
        solo.epochs,
        solo.status,
        solo.best_epoch,
    )
    assert [h.epoch for h in packed.history] == [h.epoch for h in solo.history]
    assert [h.step for h in packed.history] == [h.step for h in solo.history]
    assert [h.lr for h in packed.history] == [h.lr for h in solo.history]
    assert [r["step"] for r in packed.gradchecks if r["step"] >= checks_from] == [
        r["step"] for r in solo.gradchecks if r["step"] >= checks_from
    ]
    assert all(r["passed"] for r in packed.gradchecks)
    errors = rel_errors(packed, solo)
    assert max(errors) <= tol, errors
    for a, b in zip(packed.history, solo.history, strict=True):
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-7, abs=1e-12)
        for part in ("train", "val"):
            assert a.to_dict()[part].keys() == b.to_dict()[part].keys()
            for key, value in getattr(b, part).items():
                assert getattr(a, part)[key] == pytest.approx(value, rel=1e-7, abs=1e-12), key


# 60 training rows (100 samples, 20 % validation, 20 % test): batch 6 is 10 steps an epoch,
# batch 8 is 8 (the last batch of 4 rows), so 20 resp. 25 epochs are 200 steps.
EPOCHS_FOR_200 = {6: 20, 8: 25}
DATASETS = {
    "cross_entropy": {"name": "blobs", "n_samples": 100, "n_features": 3, "n_classes": 3},
    "logistic": {"name": "moons", "n_samples": 100, "noise": 0.2},
    "squared": {"name": "sine", "n_samples": 100},
}


@st.composite
def packs(draw: st.DrawFn) -> list[JobSpec]:
    """2–4 specs of one shape (data set, widths, activation, loss, batch size) with their
    own seeds, rates, momentum, Nesterov, weight decay, dropout and schedule."""
    loss = draw(st.sampled_from(sorted(DATASETS)))
    hidden = draw(st.lists(st.integers(1, 9), min_size=0, max_size=3))  # [ ]: no hidden layer
    activation = draw(st.sampled_from(["relu", "leaky_relu", "sigmoid", "tanh", "identity"]))
    batch = draw(st.sampled_from(sorted(EPOCHS_FOR_200)))
    base = {
        "dataset": {**DATASETS[loss], "seed": draw(st.integers(0, 3))},
        "loss": loss,
        "model": {"hidden": hidden, "activation": activation},
        "regularization": {"early_stopping": {"enabled": False}},
        "gradcheck": {"every_steps": 97, "fd_samples": 2},
    }
    specs = []
    for _ in range(draw(st.integers(2, 4))):
        momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
        lr = draw(st.sampled_from([0.003, 0.02, 0.08]))
        kind = draw(st.sampled_from(["constant", "step", "cosine"]))
        specs.append(
            make_spec(
                base,
                seed=draw(st.integers(0, 2**32 - 1)),
                model={
                    "hidden": hidden,
                    "activation": activation,
                    "init": draw(st.sampled_from(["he", "xavier", "normal"])),
                },
                optimizer={
                    "lr": lr,
                    "momentum": momentum,
                    "nesterov": momentum > 0 and draw(st.booleans()),
                    "batch_size": batch,
                    "epochs": EPOCHS_FOR_200[batch],
                    "schedule": {"kind": kind, "step_size": 7, "gamma": 0.5, "min_lr": lr / 10},
                },
                regularization={
                    "weight_decay": draw(st.sampled_from([0.0, 1e-3, 3e-2])),
                    "dropout": draw(st.sampled_from([0.0, 0.0, 0.2, 0.5])),
                    "early_stopping": {"enabled": False},
                },
            )
        )
    return specs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=packs())
def test_each_member_is_its_spec_trained_alone_float64(specs: list[JobSpec]) -> None:
    results = train_packed(specs, dtype=F64, chunk=2)  # chunks of 2: members cross chunks
    for spec, packed in zip(specs, results, strict=True):
        try:
            solo = train(spec, dtype=F64)
        except Diverged as exc:
            assert isinstance(packed, Diverged), packed
            assert (packed.epoch, packed.step) == (exc.epoch, exc.step)
            continue
        except GradcheckFailed as exc:  # e.g. finite differences across a ReLU's kink
            assert isinstance(packed, GradcheckFailed), packed
            assert packed.report.step == exc.report.step
            continue
        assert solo.steps == 200
        assert_same_training(packed, solo)


@pytest.mark.parametrize("loss", sorted(DATASETS))
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh", "identity", "elu"])
def test_every_activation_and_loss_float64_200_steps(activation: str, loss: str) -> None:
    """Each activation × loss (the hypothesis test samples them; here every pair), with
    three members that mix decay, dropout, momentum, Nesterov and the schedules (one warms
    up)."""
    base = {
        "dataset": {**DATASETS[loss], "seed": 0},
        "loss": loss,
        "model": {"hidden": [7, 5], "activation": activation},
        "optimizer": {"batch_size": 8, "epochs": EPOCHS_FOR_200[8], "lr": 0.01},
        "regularization": {"early_stopping": {"enabled": False}},
        "gradcheck": {"every_steps": 50, "fd_samples": 2},
    }
    specs = [
        make_spec(
            base,
            seed=11,
            optimizer={"momentum": 0.9, "nesterov": True, "schedule": {"kind": "cosine"}},
            regularization={"weight_decay": 0.01, "dropout": 0.25},
        ),
        make_spec(
            base, seed=12, optimizer={"momentum": 0.0, "schedule": {"kind": "step", "step_size": 5}}
        ),
        make_spec(
            base, seed=13, optimizer={"lr": 0.02, "momentum": 0.5, "schedule": {"warmup_epochs": 2}}
        ),
    ]
    for spec, packed in zip(specs, train_packed(specs, dtype=F64), strict=True):
        solo = train(spec, dtype=F64)
        assert solo.steps == 200
        assert_same_training(packed, solo)


MIXED: dict[str, Any] = {
    "dataset": {"name": "wine", "seed": 1},
    "model": {"hidden": [16, 8], "activation": "tanh"},
    "optimizer": {"epochs": 6, "batch_size": 16},
    "regularization": {"early_stopping": {"enabled": False}},
    "gradcheck": {"every_steps": 13},
}


def mixed_specs() -> list[JobSpec]:
    """Four members that differ in everything a member may differ in."""
    return [
        make_spec(MIXED, seed=1),
        make_spec(
            MIXED,
            seed=2,
            optimizer={"lr": 0.05, "momentum": 0.5, "nesterov": True, "epochs": 4},
            regularization={"dropout": 0.3, "weight_decay": 0.01},
        ),
        make_spec(
            MIXED,
            seed=3,
            optimizer={"momentum": 0.0, "epochs": 7, "schedule": {"kind": "cosine"}},
            regularization={"dropout": 0.1, "weight_decay": 0.0},
        ),
        make_spec(
            MIXED,
            seed=4,
            optimizer={"lr": 0.01, "schedule": {"kind": "step", "step_size": 2}},
            gradcheck={"every_steps": 5, "max_batch": 4},
        ),
    ]


def test_float32_members_reach_the_solo_validation_accuracy_within_one_row() -> None:
    base = {
        "dataset": {"name": "digits", "seed": 0},
        "model": {"hidden": [32, 32]},
        "optimizer": {"epochs": 6},
        "regularization": {"early_stopping": {"enabled": False}},
    }
    specs = [
        make_spec(base, seed=0),
        make_spec(base, seed=1, optimizer={"lr": 0.05, "nesterov": True}),
        make_spec(base, seed=2, regularization={"dropout": 0.2}),
        make_spec(base, seed=3, optimizer={"momentum": 0.0, "schedule": {"kind": "cosine"}}),
    ]
    results = train_packed(specs)
    for spec, packed in zip(specs, results, strict=True):
        solo = train(spec)
        assert isinstance(packed, TrainResult) and packed.steps == solo.steps
        n_val = len(solo.data.y_val)
        gap = abs(packed.metrics["val_accuracy"] - solo.metrics["val_accuracy"])
        assert gap <= 1.0 / n_val + 1e-12, (gap, n_val)
        assert packed.metrics["val_accuracy"] > 0.6  # it learnt (10 classes)


class StopAfter(Callback):
    """Asks to stop at its ``steps``-th question (should_stop is asked after each step)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.calls = steps, 0

    def should_stop(self) -> bool:
        self.calls += 1
        return self.calls >= self.steps


def test_a_member_stopped_midway_leaves_and_the_others_are_unchanged() -> None:
    specs = mixed_specs()
    results = train_packed(specs, callbacks=[[], [StopAfter(17)], [], []], dtype=F64, chunk=3)
    stopped = results[1]
    assert isinstance(stopped, TrainResult) and stopped.status == "cancelled"
    # 7 steps an epoch, should_stop asked after each step and at each epoch's end: the 17th
    # question comes after step 15, in the middle of epoch 3
    assert stopped.steps == 15 and stopped.epochs == 2
    assert_same_training(stopped, train(specs[1], callbacks=[StopAfter(17)], dtype=F64))
    for k in (0, 2, 3):
        assert_same_training(results[k], train(specs[k], dtype=F64))


def test_on_result_hands_each_member_over_as_it_leaves_while_the_others_train() -> None:
    """A member stopped midway is handed over before the others have taken another step;
    each entry once, the one the result list ends with; a raising on_result is not the
    pack's."""
    specs = mixed_specs()

    class Steps(Callback):
        def __init__(self) -> None:
            self.step = 0

        def on_epoch_end(self, record: EpochRecord) -> None:
            self.step = record.step

    counters = [Steps() for _ in specs]
    seen: list[tuple[int, object, list[int]]] = []

    def on_result(k: int, result: TrainResult | Exception) -> None:
        seen.append((k, result, [c.step for c in counters]))
        raise RuntimeError("a broken listener")

    callbacks = [[counters[k]] + ([StopAfter(17)] if k == 1 else []) for k in range(4)]
    results = train_packed(specs, callbacks=callbacks, dtype=F64, chunk=4, on_result=on_result)
    assert sorted(k for k, _, _ in seen) == [0, 1, 2, 3]
    assert all(results[k] is r for k, r, _ in seen)
    first, _, steps_then = seen[0]
    assert first == 1  # stopped after step 15 of 7 steps an epoch: the others at epoch 2
    assert steps_then == [14, 14, 14, 14]
    assert all(isinstance(r, TrainResult) and r.status == "completed" for r in results[::2])


def test_a_diverging_member_leaves_with_its_error_and_the_rest_finish() -> None:
    relu = {"hidden": [16, 8], "activation": "relu"}  # tanh's bounded units rarely overflow
    specs = [make_spec(MIXED, seed=k, model=relu) for k in range(4)]
    specs[1] = make_spec(MIXED, seed=1, model=relu, optimizer={"momentum": 0.5, "nesterov": True})
    # (no validator: at such weights its finite differences fail before the loss overflows)
    specs[2] = make_spec(
        MIXED, seed=2, model=relu, optimizer={"lr": 1e6}, gradcheck={"every_steps": 0}
    )
    results = train_packed(specs, dtype=F64, chunk=3)
    with pytest.raises(Diverged) as solo:
        train(specs[2], dtype=F64)
    diverged = results[2]
    assert isinstance(diverged, Diverged)
    assert (diverged.epoch, diverged.step) == (solo.value.epoch, solo.value.step)
    assert diverged.step < 42  # in the middle of training
    for k in (0, 1, 3):
        assert_same_training(results[k], train(specs[k], dtype=F64))


def test_members_stop_early_on_their_own_patience() -> None:
    base = {
        "dataset": {"name": "moons", "noise": 0.3, "n_samples": 200, "seed": 0},
        "model": {"hidden": [32, 32]},
        "optimizer": {"lr": 0.1, "epochs": 60},
        "regularization": {"weight_decay": 0.0, "early_stopping": {"patience": 3}},
    }
    specs = [
        make_spec(base, seed=0),
        make_spec(base, seed=1, regularization={"early_stopping": {"patience": 8}}),
        make_spec(base, seed=2, regularization={"early_stopping": {"enabled": False}}),
    ]
    results = train_packed(specs, dtype=F64)
    solos = [train(s, dtype=F64) for s in specs]
    assert solos[0].status == "early_stopped" and solos[0].epochs < 60
    assert solos[2].status == "completed" and solos[2].epochs == 60
    for packed, solo in zip(results, solos, strict=True):
        assert_same_training(packed, solo)


class Saver(Callback):
    """Keeps the checkpoint written after epoch ``at`` (as bytes, like a worker)."""

    def __init__(self, at: int) -> None:
        self.at, self.saved = at, b""

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        if checkpoint.epoch == self.at:
            self.saved = checkpoint.to_bytes()


def test_a_member_resumes_alone_or_in_another_pack() -> None:
    specs = mixed_specs()
    savers = [Saver(2), Saver(3), Saver(1), Saver(2)]
    straight = train_packed(specs, callbacks=[[s] for s in savers], dtype=F64)
    ckpts = [Checkpoint.from_bytes(s.saved) for s in savers]
    # alone, in the solo engine: the same training as the uninterrupted pack's member
    for k in (1, 3):
        alone = train(specs[k], resume_from=ckpts[k], dtype=F64)
        assert_same_training(straight[k], alone, checks_from=ckpts[k].step)
        assert [h.train for h in alone.history[: ckpts[k].epoch]] == [
            h.train for h in straight[k].history[: ckpts[k].epoch]
        ]
    # in another pack (other companions, another order, one member fresh): bit-identical
    newcomer = make_spec(MIXED, seed=9, regularization={"dropout": 0.5})
    order = [3, 0, 2, 1]
    again = train_packed(
        [newcomer, *[specs[k] for k in order]],
        resume_from=[None, *[ckpts[k] for k in order]],
        dtype=F64,
        chunk=2,
    )
    for k, resumed in zip(order, again[1:], strict=True):
        assert isinstance(resumed, TrainResult)
        assert resumed.steps == straight[k].steps
        for x, y in zip(resumed.model.parameters(), straight[k].model.parameters(), strict=True):
            assert torch.equal(x, y), k
        assert [h.to_dict() | {"seconds": 0, "samples_per_s": 0} for h in resumed.history] == [
            h.to_dict() | {"seconds": 0, "samples_per_s": 0} for h in straight[k].history
        ]


def test_a_solo_checkpoint_resumes_in_a_pack() -> None:
    specs = mixed_specs()
    saver = Saver(2)
    solo = train(specs[1], callbacks=[saver], dtype=F64)
    results = train_packed(
        [specs[0], specs[1]], resume_from=[None, Checkpoint.from_bytes(saver.saved)], dtype=F64
    )
    assert_same_training(results[1], solo, checks_from=14)
    assert_same_training(results[0], train(specs[0], dtype=F64))


class Records(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.started: list[int] = []

    def on_train_start(self, **kwargs: Any) -> None:
        self.started.append(kwargs["resumed_epoch"])

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.epochs.append(record.epoch)


def test_callbacks_are_per_member() -> None:
    specs = mixed_specs()
    recs = [Records() for _ in specs]
    results = train_packed(specs, callbacks=[[r] for r in recs], dtype=F64)
    for spec, rec, result in zip(specs, recs, results, strict=True):
        assert rec.started == [0]
        assert rec.epochs == list(range(1, spec.optimizer.epochs + 1))
        assert isinstance(result, TrainResult) and result.epochs == spec.optimizer.epochs


def test_specs_of_another_shape_cannot_share_a_pack() -> None:
    a = make_spec(MIXED, seed=1)
    assert pack_key(a) == pack_key(make_spec(MIXED, seed=2, optimizer={"lr": 0.5}))
    for other in (
        make_spec(MIXED, model={"hidden": [16, 9]}),
        make_spec(MIXED, model={"hidden": [16, 8], "activation": "relu"}),
        make_spec(MIXED, optimizer={"batch_size": 8}),
        make_spec(MIXED, dataset={"name": "wine", "seed": 2}),
        make_spec(MIXED, loss="squared"),
        make_spec(MIXED, optimizer={"name": "adam", "momentum": 0.0}),
    ):
        assert pack_key(other) != pack_key(a)
        with pytest.raises(PackIncompatible):
            train_packed([a, other])
    # without a data set seed each job's seed splits the data: different splits
    unseeded = {**MIXED, "dataset": {"name": "wine"}}
    assert pack_key(make_spec(unseeded, seed=1)) != pack_key(make_spec(unseeded, seed=2))
    with pytest.raises(PackIncompatible, match="autograd"):
        train_packed([a, make_spec(MIXED, engine="autograd")])


def test_float32_resume_in_another_pack_is_bit_identical() -> None:
    specs = mixed_specs()
    savers = [Saver(3) for _ in specs]
    straight = train_packed(specs, callbacks=[[s] for s in savers])
    ckpts = [Checkpoint.from_bytes(s.saved) for s in savers]
    again = train_packed(
        [specs[2], specs[0], make_spec(MIXED, seed=7)], resume_from=[ckpts[2], ckpts[0], None]
    )
    for k, resumed in zip((2, 0), again[:2], strict=True):
        assert isinstance(resumed, TrainResult) and resumed.steps == straight[k].steps
        for x, y in zip(resumed.model.parameters(), straight[k].model.parameters(), strict=True):
            assert torch.equal(x, y), k
        assert resumed.metrics == straight[k].metrics


def test_a_member_whose_callback_raises_leaves_with_that_error() -> None:
    class Broken(Callback):
        def on_epoch_end(self, record: EpochRecord) -> None:
            if record.epoch == 2:
                raise RuntimeError("the tracker is down")

    specs = mixed_specs()
    results = train_packed(specs, callbacks=[[], [], [Broken()], []], dtype=F64)
    assert isinstance(results[2], RuntimeError) and "tracker" in str(results[2])
    for k in (0, 1, 3):
        assert_same_training(results[k], train(specs[k], dtype=F64))


def test_a_member_given_another_jobs_checkpoint_fails_alone() -> None:
    specs = mixed_specs()
    saver = Saver(1)
    train(specs[0], callbacks=[saver], dtype=F64)
    results = train_packed(
        specs[:3], resume_from=[None, Checkpoint.from_bytes(saver.saved), None], dtype=F64
    )
    assert isinstance(results[1], CheckpointError) and "differs in" in str(results[1])
    for k in (0, 2):
        assert_same_training(results[k], train(specs[k], dtype=F64))


class Recorded(Callback):
    def __init__(self) -> None:
        self.records: list[EpochRecord] = []

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.records.append(record)


def _records(specs: list[JobSpec], dtype: torch.dtype, **kw: Any) -> list[list[EpochRecord]]:
    seen = [Recorded() for _ in specs]
    train_packed(specs, callbacks=[[r] for r in seen], dtype=dtype, **kw)
    return [r.records for r in seen]


def _same_numbers(a: EpochRecord, b: EpochRecord, rel: float) -> None:
    for part in ("train", "val"):
        x, y = getattr(a, part), getattr(b, part)
        assert x.keys() == y.keys()
        for key, value in y.items():
            assert x[key] == pytest.approx(value, rel=rel, abs=1e-15), (part, key)
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers, strict=True):
        for key, value in lb.items():
            assert la[key] == pytest.approx(value, rel=rel, abs=1e-15), key


@pytest.mark.parametrize(
    ("dataset", "activation"),
    [("wine", "relu"), ("wine", "sigmoid"), ("wine", "tanh"), ("diabetes", "relu")],
)
def test_the_batched_epoch_evaluation_gives_each_members_own_numbers(
    dataset: str, activation: str
) -> None:
    """The pack evaluates its members in one batched pass; each member's records (metrics,
    dead units, update ratios) are those its spec's solo training writes, in float64 to
    1e-9 (the pack's equivalence tolerance: their parameters agree to it) — the dead units
    too, which a large learning rate makes appear."""
    base = {
        "dataset": {"name": dataset, "seed": 0},
        "model": {"hidden": [16, 8], "activation": activation},
        "optimizer": {"epochs": 3, "batch_size": 16},
        "regularization": {"early_stopping": {"enabled": False}},
        "gradcheck": {"at_start": False, "every_steps": 0},
    }
    # rates that make dead (relu) or saturated (sigmoid) units; tanh's training turns
    # chaotic at such rates (pack and solo then part beyond rounding), so it keeps to lower
    rates = [0.02, 0.6, 3.0] if activation == "tanh" else [0.02, 1.0, 6.0]
    specs = [make_spec(base, seed=k, optimizer={"lr": lr}) for k, lr in enumerate(rates)]
    packed = _records(specs, F64)
    for spec, records in zip(specs, packed, strict=True):
        solo = Recorded()
        train(spec, callbacks=[solo], dtype=F64)
        for a, b in zip(records, solo.records, strict=True):
            _same_numbers(a, b, 1e-9)
    dead = [layer["dead_fraction"] for r in packed for rec in r for layer in rec.layers]
    assert any(d > 0 for d in dead) or activation == "tanh"


def test_a_members_records_do_not_depend_on_its_pack() -> None:
    """float32: member 0's records are bit-identical alone and in packs of 3 and of 5 (the
    evaluation's chunks of rows depend on the widths, not on the pack)."""
    specs = [make_spec(MIXED, seed=k, gradcheck={"every_steps": 0}) for k in range(5)]

    def numbers(records: list[EpochRecord]) -> list[dict[str, Any]]:
        clock = ("seconds", "samples_per_s")
        return [{k: v for k, v in r.to_dict().items() if k not in clock} for r in records]

    alone = numbers(_records(specs[:1], torch.float32)[0])
    for k in (3, 5):
        assert numbers(_records(specs[:k], torch.float32)[0]) == alone


def test_members_with_more_training_rows_than_an_epoch_evaluates_each_evaluate_alone() -> None:
    """Beyond TRAIN_EVAL_ROWS training rows each member evaluates its own random subset:
    the pack then evaluates each member alone, with the same numbers as its solo run."""
    base = {
        "dataset": {"name": "blobs", "n_samples": 18_000, "n_features": 4, "seed": 0},
        "model": {"hidden": [8]},
        "optimizer": {"epochs": 1, "batch_size": 4096},
        "regularization": {"early_stopping": {"enabled": False}},
        "gradcheck": {"at_start": False, "every_steps": 0},
    }
    specs = [make_spec(base, seed=k) for k in range(2)]
    for spec, records in zip(specs, _records(specs, F64), strict=True):
        solo = Recorded()
        train(spec, callbacks=[solo], dtype=F64)
        _same_numbers(records[0], solo.records[0], 1e-9)


def test_plateau_members_reduce_their_own_rates_as_alone() -> None:
    """A plateau schedule's reductions (each member's own monitor, patience, cooldown) are
    the same in a pack as alone, float64; the members' rates do come down."""
    base = MIXED
    specs = [
        make_spec(
            base,
            seed=s,
            optimizer={
                "lr": 0.2,
                "epochs": 8,
                "schedule": {"kind": "plateau", "patience": p, "monitor": m, "cooldown": c},
            },
        )
        for s, p, m, c in (
            (1, 1, "val_accuracy", 0),
            (2, 2, "val_loss", 1),
            (3, 1, "train_loss", 0),
        )
    ]
    for spec, packed in zip(specs, train_packed(specs, dtype=F64), strict=True):
        solo = train(spec, dtype=F64)
        assert_same_training(packed, solo)
    rates = [h.lr for h in train(specs[0], dtype=F64).history]
    assert min(rates) < rates[0]


def test_clipping_members_clip_and_count_as_alone() -> None:
    """Members with their own clip_norm (or none) among others: float64, the same steps and
    the same count of clipped steps in each epoch's record as alone; some steps clip."""
    specs = [
        make_spec(MIXED, seed=1, optimizer={"lr": 0.1, "clip_norm": 0.5}),
        make_spec(MIXED, seed=2, optimizer={"lr": 0.1}),
        make_spec(MIXED, seed=3, optimizer={"lr": 0.05, "momentum": 0.5, "clip_norm": 2.0}),
    ]
    counts = []
    for spec, packed in zip(specs, train_packed(specs, dtype=F64), strict=True):
        solo = train(spec, dtype=F64)
        assert_same_training(packed, solo)
        assert isinstance(packed, TrainResult)
        got = [h.clipped_steps for h in packed.history]
        assert got == [h.clipped_steps for h in solo.history]
        counts.append(got)
    assert counts[1] == [None] * len(counts[1])
    assert sum(counts[0]) > 0  # clip 0.5 scales some steps down


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop"])
def test_adaptive_optimizers_train_in_packs_as_alone(name: str) -> None:
    """A pack of one optimizer: members with their own rates, betas (alpha), eps, weight
    decay, clipping and schedules take the same steps as alone (float64)."""
    own = {"adam": {"betas": [0.8, 0.99]}, "adamw": {"eps": 1e-6}, "rmsprop": {"alpha": 0.9}}
    base = {**MIXED, "optimizer": {"epochs": 5, "batch_size": 16, "name": name}}
    specs = [
        make_spec(base, seed=1, optimizer={"lr": 0.01, **own[name]}),
        make_spec(
            base,
            seed=2,
            optimizer={"lr": 0.003, "clip_norm": 0.5, "schedule": {"kind": "cosine"}},
            regularization={"weight_decay": 0.01, "dropout": 0.2},
        ),
        make_spec(base, seed=3, regularization={"weight_decay": 0.0}),
    ]
    assert all(packable(s) for s in specs) and len({pack_key(s) for s in specs}) == 1
    for spec, packed in zip(specs, train_packed(specs, dtype=F64), strict=True):
        assert_same_training(packed, train(spec, dtype=F64))


def test_an_adam_member_resumes_in_a_pack_bit_for_bit_as_its_checkpoint_says() -> None:
    """The pack's adam state (moments and step count) goes into each member's checkpoint:
    resumed alone, a member finishes as it would have in the pack, within rounding."""
    base = {**MIXED, "optimizer": {"epochs": 6, "batch_size": 16, "name": "adam"}}
    specs = [make_spec(base, seed=s, optimizer={"lr": 0.01}) for s in (1, 2)]
    saved: dict[int, Checkpoint] = {}

    class Keep(Callback):
        def __init__(self, k: int) -> None:
            self.k = k

        def on_checkpoint(self, checkpoint: Checkpoint) -> None:
            if checkpoint.epoch == 3:
                saved[self.k] = Checkpoint.from_bytes(checkpoint.to_bytes())

    full = train_packed(specs, dtype=F64, callbacks=[[Keep(0)], [Keep(1)]])
    assert saved[0].optimizer_steps == full[0].history[2].step  # type: ignore[union-attr]
    alone = train(specs[0], dtype=F64, resume_from=saved[0])
    assert_same_training(full[0], alone, checks_from=saved[0].step)
