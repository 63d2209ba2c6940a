"""Training with each optimizer, gradient clipping, warm-up and plateau schedules, the new
activations and early stopping on any metric: both engines, resume bit-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from core.callbacks import Callback, EpochRecord
from core.checkpoint import Checkpoint
from core.packed import packable, unpackable_reason
from core.spec import parse_spec
from core.train import train


class Saver(Callback):
    def __init__(self, at: int, path: Path) -> None:
        self.at, self.path = at, path
        self.records: list[EpochRecord] = []

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.records.append(record)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        if checkpoint.epoch == self.at:
            checkpoint.save(self.path)


def _weights(result: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in result.model.parameters()]


def _spec(optimizer: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "dataset": {"name": "wine"},
        "model": {"hidden": [16, 8], "activation": "tanh"},
        "optimizer": {"epochs": 7, "batch_size": 16, **optimizer},
        "regularization": {
            "dropout": 0.2,
            "weight_decay": 0.001,
            "early_stopping": {"enabled": True, "patience": 100},
        },
        "gradcheck": {"every_steps": 9},
        "seed": 5,
        **more,
    }


PLATEAU = {"kind": "plateau", "patience": 1, "gamma": 0.5, "monitor": "val_accuracy"}
RESUMES = {
    "sgd-plateau-clip": {"name": "sgd", "lr": 0.3, "clip_norm": 0.5, "schedule": PLATEAU},
    "adam-warmup-cosine": {
        "name": "adam",
        "lr": 0.01,
        "schedule": {"kind": "cosine", "warmup_epochs": 2, "min_lr": 1e-4},
    },
    "adamw-plateau": {"name": "adamw", "lr": 0.05, "schedule": PLATEAU},
    "rmsprop-step-clip": {
        "name": "rmsprop",
        "clip_norm": 1.0,
        "schedule": {"kind": "step", "step_size": 2, "warmup_epochs": 1},
    },
}


@pytest.mark.parametrize("case", sorted(RESUMES))
def test_resume_is_bit_identical_for_each_optimizer_and_schedule(case: str, tmp_path: Path) -> None:
    spec = parse_spec(_spec(RESUMES[case]))
    saver = Saver(3, tmp_path / "c.pt")
    straight = train(spec, callbacks=[saver])
    resumed = train(spec, resume_from=Checkpoint.load(tmp_path / "c.pt"))
    assert resumed.steps == straight.steps
    assert all(
        torch.equal(x, y) for x, y in zip(_weights(straight), _weights(resumed), strict=True)
    )
    assert [h.lr for h in resumed.history] == [h.lr for h in straight.history]
    assert [h.train for h in resumed.history] == [h.train for h in straight.history]
    rates = [r.lr for r in saver.records]
    assert len(set(rates[3:])) > 1 or len(set(rates)) > 1  # the schedule moved the rate


def test_a_plateau_reduction_after_the_checkpoint_needs_its_state(tmp_path: Path) -> None:
    """The plateau's state is in the checkpoint: resumed, the rate goes on where it was
    (lost, the rate would restart at lr)."""
    spec = parse_spec(_spec(RESUMES["adamw-plateau"]))
    saver = Saver(5, tmp_path / "c.pt")
    train(spec, callbacks=[saver])
    rates = [r.lr for r in saver.records]
    assert rates[5] < spec.optimizer.lr  # reduced by then: the state matters
    resumed = train(spec, resume_from=Checkpoint.load(tmp_path / "c.pt"))
    assert [h.lr for h in resumed.history] == rates


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop"])
def test_float64_engines_take_the_same_steps_with_each_optimizer(name: str) -> None:
    base = _spec({"name": name, "epochs": 3, "clip_norm": 0.7})
    m = train(parse_spec({**base, "engine": "manual"}), dtype=torch.float64)
    a = train(parse_spec({**base, "engine": "autograd"}), dtype=torch.float64)
    assert m.steps == a.steps
    for x, y in zip(_weights(m), _weights(a), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_clipping_counts_the_steps_it_scaled_down() -> None:
    rec = Saver(0, Path("unused"))
    tiny = train(parse_spec(_spec({"epochs": 2, "clip_norm": 1e-6})), callbacks=[rec])
    per_epoch = [r.clipped_steps for r in rec.records]
    steps = tiny.history[0].step  # an epoch's steps: every one of them clipped
    assert steps > 1 and per_epoch == [steps, steps]
    assert tiny.history[0].metrics()["clipped_steps"] == steps
    rec = Saver(0, Path("unused"))
    train(parse_spec(_spec({"epochs": 2, "clip_norm": 1e6})), callbacks=[rec])
    assert [r.clipped_steps for r in rec.records] == [0, 0]
    rec = Saver(0, Path("unused"))
    train(parse_spec(_spec({"epochs": 1})), callbacks=[rec])
    assert rec.records[0].clipped_steps is None
    assert "clipped_steps" not in rec.records[0].metrics()


def test_warmup_rises_linearly_into_the_schedule() -> None:
    opt = {"epochs": 6, "lr": 0.4, "schedule": {"kind": "step", "step_size": 2, "warmup_epochs": 3}}
    result = train(parse_spec(_spec(opt)))
    assert [h.lr for h in result.history] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.2])


def test_warmup_steps_scale_the_first_steps_then_resume_bit_identically(tmp_path: Path) -> None:
    """Step s < w takes lr·(s+1)/(w+1): a run warming up over more than the checkpoint's
    steps resumes bit-identically, and differs from the run without warm-up."""
    opt = {"name": "adam", "lr": 0.01, "schedule": {"warmup_steps": 30}}
    spec = parse_spec(_spec(opt))
    saver = Saver(2, tmp_path / "c.pt")
    straight = train(spec, callbacks=[saver])
    assert saver.records[1].step < 30  # still warming up at the checkpoint
    resumed = train(spec, resume_from=Checkpoint.load(tmp_path / "c.pt"))
    assert all(
        torch.equal(x, y) for x, y in zip(_weights(straight), _weights(resumed), strict=True)
    )
    plain = train(parse_spec(_spec({"name": "adam", "lr": 0.01})))
    assert not torch.equal(_weights(plain)[0], _weights(straight)[0])
    one = _spec({"name": "sgd", "lr": 0.5, "momentum": 0.0, "epochs": 1})
    one["regularization"]["weight_decay"] = 0.0
    one["regularization"]["dropout"] = 0.0
    one["gradcheck"] = {"at_start": False, "every_steps": 0}
    one["optimizer"]["batch_size"] = 1000  # one step: its size shows the rate
    a = train(parse_spec(one))
    one["optimizer"]["schedule"] = {"warmup_steps": 3}
    b = train(parse_spec(one))
    start = train(parse_spec({**one, "optimizer": {**one["optimizer"], "lr": 1e-9}}))
    da = _weights(a)[0] - _weights(start)[0]
    db = _weights(b)[0] - _weights(start)[0]
    torch.testing.assert_close(db, da / 4, rtol=1e-4, atol=1e-6)  # (0+1)/(3+1) of the step


def test_early_stopping_on_val_accuracy_restores_its_best_epoch() -> None:
    spec = parse_spec(
        _spec(
            {"name": "adam", "lr": 0.02, "epochs": 30},
            regularization={
                "early_stopping": {"monitor": "val_accuracy", "patience": 3, "restore_best": True}
            },
        )
    )
    result = train(spec)
    accs = [h.val["accuracy"] for h in result.history]
    best = max(accs)
    assert result.best_epoch == accs.index(best) + 1
    assert result.status == "early_stopped"
    assert len(accs) - result.best_epoch == 3  # patience epochs without a higher accuracy
    assert result.metrics["val_accuracy"] == pytest.approx(best)


@pytest.mark.parametrize("activation", ["gelu", "elu", "silu", "softplus"])
def test_new_activations_train_in_both_engines_with_the_validator(activation: str) -> None:
    base = _spec({"epochs": 2}, gradcheck={"every_steps": 5})
    base["model"]["activation"] = activation
    m = train(parse_spec({**base, "engine": "manual"}), dtype=torch.float64)
    a = train(parse_spec({**base, "engine": "autograd"}), dtype=torch.float64)
    assert m.gradchecks and all(r["passed"] for r in m.gradchecks)
    for x, y in zip(_weights(m), _weights(a), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"optimizer": {"schedule": {"warmup_steps": 10}}}, "warmup_steps"),
        ({"model": {"activation": "gelu"}}, "activation 'gelu'"),
        ({"engine": "autograd"}, "engine 'autograd'"),
    ],
)
def test_a_spec_the_packed_engine_cannot_train_says_why(
    change: dict[str, Any], needle: str
) -> None:
    spec = parse_spec({"dataset": "iris", **change})
    reason = unpackable_reason(spec)
    assert reason is not None and needle in reason
    assert not packable(spec)


def test_packable_specs_have_no_reason() -> None:
    for change in (
        {},
        {"model": {"activation": "elu"}},
        {"optimizer": {"schedule": {"warmup_epochs": 2}}},
    ):
        spec = parse_spec({"dataset": "iris", **change})
        assert unpackable_reason(spec) is None and packable(spec)


def test_a_sweep_searches_the_optimizer_the_activation_and_the_monitor() -> None:
    """Each new field is a spec field a sweep's space may name; a trial takes its optimizer's
    defaults for what the base leaves out, and a value that makes no valid spec (momentum
    with adam) is refused at its path."""
    from core.spec import InvalidSpec
    from core.sweep import parse_sweep, trial_spec

    data = {
        "name": "s",
        "base": {"dataset": "digits", "optimizer": {"epochs": 5}},
        "space": {
            "optimizer.name": {"choice": ["sgd", "adam", "adamw", "rmsprop"]},
            "model.activation": {"choice": ["gelu", "silu"]},
            "optimizer.clip_norm": {"loguniform": [0.1, 10.0]},
            "optimizer.schedule.warmup_epochs": {"int": [0, 2]},
        },
        "search": {"method": "random", "trials": 4},
        "objective": {"metric": "val_accuracy", "mode": "max"},
    }
    sweep = parse_sweep(data)
    params = {
        "optimizer.name": "adam",
        "model.activation": "silu",
        "optimizer.clip_norm": 1.0,
        "optimizer.schedule.warmup_epochs": 1,
    }
    trial = trial_spec(sweep, sweep_id="sw", number=0, params=params, parent_run_id=None)
    assert (trial.optimizer.name, trial.optimizer.lr, trial.optimizer.momentum) == ("adam", 1e-3, 0)
    assert trial.model.activation == "silu" and trial.optimizer.clip_norm == 1.0
    bad = {**data, "base": {"dataset": "digits", "optimizer": {"epochs": 5, "momentum": 0.9}}}
    with pytest.raises(InvalidSpec) as caught:
        parse_sweep(bad)
    assert any(
        e.field == 'space["optimizer.name"]' and "only sgd takes momentum" in e.message
        for e in caught.value.errors
    )


def test_the_adam_example_parses_and_trains() -> None:
    from core.spec import load_spec

    path = Path(__file__).resolve().parents[3] / "examples" / "digits-adam.yaml"
    spec = load_spec(path)
    assert (spec.optimizer.name, spec.model.activation) == ("adam", "gelu")
    assert spec.regularization.early_stopping.monitor == "val_accuracy"
    job = spec.model_dump(mode="json")
    job["optimizer"]["epochs"] = 5
    result = train(parse_spec(job))
    assert result.metrics["test_accuracy"] > 0.8
    assert unpackable_reason(spec) == "activation 'gelu': packs take in-place activations only"
    # the epochs' macro scores, and at the end the test part's confusion matrix
    assert {"macro_f1", "macro_precision", "macro_recall"} <= set(result.history[-1].val)
    cm = result.confusion
    assert cm is not None and len(cm["matrix"]) == 10
    assert sum(map(sum, cm["matrix"])) == len(result.data.y_test)
    hits = sum(cm["matrix"][i][i] for i in range(10))
    assert hits / len(result.data.y_test) == pytest.approx(result.metrics["test_accuracy"])
    assert result.metrics["test_macro_f1"] == pytest.approx(sum(cm["f1"]) / 10)


def test_a_regression_reports_mae_and_no_confusion_matrix() -> None:
    result = train(parse_spec({"dataset": "sine", "optimizer": {"epochs": 2}}))
    assert result.confusion is None
    assert "mae" in result.history[-1].val and result.metrics["test_mae"] > 0


def test_a_checkpoint_written_before_the_new_fields_resumes(tmp_path: Path) -> None:
    """A checkpoint's spec as stored before ``optimizer.name`` and its companions existed
    reads with their defaults: the job resumes, bit-identically."""
    spec = parse_spec(_spec({}))
    saver = Saver(3, tmp_path / "c.pt")
    straight = train(spec, callbacks=[saver])
    ckpt = Checkpoint.load(tmp_path / "c.pt")
    opt = ckpt.spec["optimizer"]
    for key in ("name", "betas", "alpha", "eps", "clip_norm"):
        del opt[key]
    for key in ("warmup_epochs", "patience", "cooldown", "monitor", "mode"):
        del opt["schedule"][key]
    for key in ("monitor", "mode"):
        del ckpt.spec["regularization"]["early_stopping"][key]
    resumed = train(spec, resume_from=ckpt)
    assert all(
        torch.equal(x, y) for x, y in zip(_weights(straight), _weights(resumed), strict=True)
    )
