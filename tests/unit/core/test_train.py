"""The training loop: accuracy on real data, determinism, exact resume, divergence, cancel."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from core.callbacks import Callback, EpochRecord
from core.checkpoint import Checkpoint, CheckpointError
from core.gradcheck import GradcheckFailed, GradcheckReport
from core.spec import JobSpec, parse_spec
from core.train import Diverged, train

ROOT = Path(__file__).resolve().parents[3]


class Recorder(Callback):
    def __init__(self, save_at: int | None = None, path: Path | None = None) -> None:
        self.records: list[EpochRecord] = []
        self.reports: list[GradcheckReport] = []
        self.save_at, self.path = save_at, path
        self.saved_epochs: list[int] = []

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.records.append(record)

    def on_gradcheck(self, report: GradcheckReport) -> None:
        self.reports.append(report)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.saved_epochs.append(checkpoint.epoch)
        if checkpoint.epoch == self.save_at and self.path is not None:
            checkpoint.save(self.path)


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])
def test_default_spec_reaches_095_test_accuracy(dataset: str) -> None:
    rec = Recorder()
    result = train(parse_spec({"dataset": dataset}), callbacks=[rec])
    assert result.metrics["test_accuracy"] >= 0.95, result.metrics
    assert len(rec.records) == result.epochs == len(result.history)
    assert [r.epoch for r in rec.records] == list(range(1, result.epochs + 1))
    assert rec.reports and rec.reports[0].passed and rec.reports[0].step == 0
    m = rec.records[-1].metrics()
    for key in (
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr",
        "grad_norm",
        "samples_per_s",
        "layer1_dead_fraction",
        "layer1_update_ratio",
        "epoch_seconds",
    ):
        assert key in m and m[key] == m[key], key  # present and not NaN


def test_regression_learns_the_sine() -> None:
    result = train(
        parse_spec({"dataset": "sine", "model": {"hidden": [32, 32], "activation": "tanh"}})
    )
    assert result.metrics["test_r2"] > 0.9
    assert result.metrics["test_rmse"] < 0.35  # noise is 0.1; sin has std ≈ 0.7


def _weights(result: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in result.model.parameters()]


RESUME_SPEC: dict[str, Any] = {
    "dataset": {"name": "wine"},
    "model": {"hidden": [16, 8], "activation": "tanh"},
    "optimizer": {
        "epochs": 6,
        "batch_size": 16,
        "momentum": 0.9,
        "nesterov": True,
        "schedule": {"kind": "cosine", "min_lr": 0.001},
    },
    "regularization": {
        "dropout": 0.2,
        "weight_decay": 0.001,
        "early_stopping": {"enabled": True, "patience": 100},
    },
    "gradcheck": {"every_steps": 7},
    "seed": 5,
}


def test_same_seed_same_numbers_and_different_seed_differs() -> None:
    spec = parse_spec(RESUME_SPEC)
    a, b = train(spec), train(spec)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))
    assert [h.train for h in a.history] == [h.train for h in b.history]
    c = train(parse_spec({**RESUME_SPEC, "seed": 6}))
    assert not torch.equal(_weights(a)[0], _weights(c)[0])


def test_resume_in_a_new_process_is_bit_identical(tmp_path: Path) -> None:
    spec = parse_spec(RESUME_SPEC)
    ckpt = tmp_path / "half.pt"
    straight = train(spec, callbacks=[Recorder(save_at=3, path=ckpt)])
    assert ckpt.exists()
    out = tmp_path / "resumed.pt"
    script = f"""
import json, torch
from core.checkpoint import Checkpoint
from core.spec import parse_spec
from core.train import train
spec = parse_spec(json.loads({spec.model_dump_json()!r}))
result = train(spec, resume_from=Checkpoint.load({str(ckpt)!r}))
torch.save({{"params": [p.detach() for p in result.model.parameters()],
            "history": [h.to_dict() for h in result.history], "steps": result.steps}}, {str(out)!r})
"""
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=300)
    resumed = torch.load(out, weights_only=True)
    assert resumed["steps"] == straight.steps
    for x, y in zip(_weights(straight), resumed["params"], strict=True):
        assert torch.equal(x, y)  # bit-identical, not merely close
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 7))
    assert [h["train"] for h in resumed["history"]] == [h.train for h in straight.history]


def test_checkpoint_of_another_spec_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    train(parse_spec(RESUME_SPEC), callbacks=[Recorder(save_at=1, path=ckpt)])
    other = parse_spec({**RESUME_SPEC, "model": {"hidden": [4]}})
    with pytest.raises(CheckpointError, match="model"):
        train(other, resume_from=Checkpoint.load(ckpt))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a gradq checkpoint"):
        Checkpoint.load(tmp_path / "junk.pt")


def test_huge_learning_rate_diverges_naming_epoch_and_step() -> None:
    spec = parse_spec({"dataset": "digits", "optimizer": {"lr": 1e6}})
    with pytest.raises(Diverged) as info:
        train(spec)
    assert info.value.epoch == 1 and info.value.step >= 1
    assert "epoch 1" in str(info.value) and f"step {info.value.step}" in str(info.value)


@pytest.mark.parametrize("engine", ["manual", "autograd"])
def test_a_divergence_says_what_was_found_not_a_loss_it_did_not_see(engine: str) -> None:
    """A squared loss cannot be −∞: diabetes at lr 50 is caught by the step's guard, a
    non-finite gradient, and the message says so (the sum it tested, not "the loss")."""
    spec = parse_spec({"dataset": "diabetes", "optimizer": {"lr": 50.0}, "engine": engine})
    with pytest.raises(Diverged) as info:
        train(spec)
    message = str(info.value)
    assert "the gradient is not finite (the output layer's bias gradient sums to" in message
    assert "loss" not in message.split(": ", 1)[1].split("(")[0]
    assert not math.isfinite(info.value.value)


def test_a_divergence_in_the_epoch_record_names_the_training_loss() -> None:
    assert "the training loss is nan" in str(Diverged(3, 40, math.nan))


def test_should_stop_cancels_between_steps() -> None:
    class StopAfter(Callback):
        calls = 0

        def should_stop(self) -> bool:
            self.calls += 1
            return self.calls >= 5

    result = train(parse_spec({"dataset": "digits"}), callbacks=[StopAfter()])
    assert result.status == "cancelled" and result.steps == 5 and result.history == []


def test_early_stopping_restores_the_best_epoch() -> None:
    spec = parse_spec(
        {
            "dataset": {"name": "moons", "noise": 0.3, "n_samples": 200},
            "model": {"hidden": [128, 128]},
            "optimizer": {"lr": 0.1, "epochs": 200},
            "regularization": {
                "weight_decay": 0.0,
                "early_stopping": {"enabled": True, "patience": 3},
            },
        }
    )
    result = train(spec)
    assert result.status == "early_stopped" and result.epochs < 200
    best = min(h.val["loss"] for h in result.history)
    assert result.best_epoch is not None
    assert result.history[result.best_epoch - 1].val["loss"] == best
    assert result.epochs == result.best_epoch + 3
    assert result.metrics["val_loss"] == pytest.approx(best, rel=1e-6)


def test_failed_gradient_check_stops_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.activations as acts

    wrong = acts.ActivationFn("sigmoid", torch.sigmoid, lambda z, h, g: g * h, torch.nn.Sigmoid)
    monkeypatch.setitem(acts.ACTIVATIONS, "sigmoid", wrong)
    spec = parse_spec({"dataset": "iris", "model": {"activation": "sigmoid"}, "engine": "autograd"})
    with pytest.raises(GradcheckFailed) as info:
        train(spec)
    assert not info.value.report.passed and info.value.report.step == 0
    assert "FAILED" in str(info.value)


def test_engines_take_the_same_steps() -> None:
    base = {"dataset": "iris", "optimizer": {"epochs": 3}, "regularization": {"dropout": 0.3}}
    m = train(parse_spec({**base, "engine": "manual"}))
    a = train(parse_spec({**base, "engine": "autograd"}))
    assert m.engine == "manual" and a.engine == "autograd" and m.steps == a.steps
    for x, y in zip(_weights(m), _weights(a), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)  # float32 rounding only


def test_checkpoints_follow_checkpoint_every() -> None:
    rec = Recorder()
    spec = parse_spec({"dataset": "iris", "optimizer": {"epochs": 7}, "checkpoint_every": 3})
    train(spec, callbacks=[rec])
    assert rec.saved_epochs == [3, 6, 7]


def test_spec_roundtrip_through_checkpoint_bytes(tmp_path: Path) -> None:
    spec: JobSpec = parse_spec(RESUME_SPEC)
    saved: list[Checkpoint] = []

    class Keep(Callback):
        def on_checkpoint(self, checkpoint: Checkpoint) -> None:
            saved.append(Checkpoint.from_bytes(checkpoint.to_bytes()))

    train(spec, callbacks=[Keep()])
    assert saved[-1].spec == spec.model_dump(mode="json")
    assert saved[-1].epoch == 6 and len(saved[-1].history) == 6


def test_exported_model_takes_raw_features() -> None:
    from core.export import export_model

    result = train(parse_spec({"dataset": "iris", "optimizer": {"epochs": 20}}))
    exported = export_model(result)
    data = result.data
    raw_test = torch.as_tensor(data.raw(data.X_test), dtype=torch.float32)
    probs = exported(raw_test)
    assert probs.shape == (len(data.X_test), 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(data.X_test)))
    acc = float((probs.argmax(1).numpy() == data.y_test).mean())
    assert acc == pytest.approx(result.metrics["test_accuracy"])

    reg = train(parse_spec({"dataset": "diabetes", "optimizer": {"epochs": 5}}))
    pred = export_model(reg)(torch.as_tensor(reg.data.raw(reg.data.X_test), dtype=torch.float32))
    rmse = float(((pred[:, 0].double().numpy() - reg.data.y_test) ** 2).mean() ** 0.5)
    assert rmse == pytest.approx(reg.metrics["test_rmse"], rel=1e-4)


def test_gradient_checks_follow_their_cadence_also_after_resume(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "dataset": "iris",
            "optimizer": {"epochs": 4, "batch_size": 16},
            "gradcheck": {"every_steps": 5},
            "regularization": {"early_stopping": {"enabled": False}},
        }
    )
    rec = Recorder(save_at=2, path=tmp_path / "c.pt")
    result = train(spec, callbacks=[rec])
    steps = [r.step for r in rec.reports]
    assert steps == list(range(0, result.steps, 5)) and all(r.passed for r in rec.reports)
    resumed = Recorder()
    train(spec, callbacks=[resumed], resume_from=Checkpoint.load(tmp_path / "c.pt"))
    half = Checkpoint.load(tmp_path / "c.pt").step
    assert [r.step for r in resumed.reports] == [s for s in steps if s >= half]


def test_auto_engine_is_manual_on_cpu() -> None:
    result = train(parse_spec({"dataset": "iris", "optimizer": {"epochs": 2}}))
    assert result.engine == "manual" and result.device == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_is_cuda_and_manual_when_the_job_has_a_gpu() -> None:
    spec = parse_spec({"dataset": "iris", "optimizer": {"epochs": 2}, "resources": {"gpus": 1}})
    result = train(spec)
    assert result.engine == "manual" and result.device.startswith("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("engine", ["manual", "autograd"])
def test_trains_on_cuda_like_on_cpu(engine: str) -> None:
    base = {
        "dataset": "digits",
        "optimizer": {"epochs": 5},
        "engine": engine,
        "regularization": {"dropout": 0.1},
    }
    gpu = train(parse_spec({**base, "device": "cuda", "resources": {"gpus": 1}}))
    assert gpu.device.startswith("cuda") and gpu.steps > 0
    cpu = train(parse_spec(base))
    assert gpu.metrics["test_accuracy"] == pytest.approx(cpu.metrics["test_accuracy"], abs=0.05)
    assert gpu.gradchecks[0]["passed"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("engine", ["manual", "autograd"])
def test_divergence_on_cuda_is_caught_within_the_check_cadence(engine: str) -> None:
    from core.train import DIVERGENCE_CHECK_STEPS

    spec = parse_spec(
        {
            "dataset": "digits",
            "optimizer": {"lr": 1e6},
            "device": "cuda",
            "engine": engine,
            "resources": {"gpus": 1},
        }
    )
    with pytest.raises(Diverged) as info:
        train(spec)
    assert info.value.epoch == 1 and 1 <= info.value.step <= DIVERGENCE_CHECK_STEPS + 1


def test_float64_training_engines_agree_and_resume_bit_identically(tmp_path: Path) -> None:
    """``dtype=torch.float64`` trains in float64 throughout; the two engines then agree far
    beyond float32's rounding, and a resumed float64 run is bit-identical to a straight one."""
    base = {"dataset": "iris", "optimizer": {"epochs": 4}, "regularization": {"dropout": 0.3}}
    m = train(parse_spec({**base, "engine": "manual"}), dtype=torch.float64)
    a = train(parse_spec({**base, "engine": "autograd"}), dtype=torch.float64)
    assert m.steps == a.steps
    for x, y in zip(_weights(m), _weights(a), strict=True):
        assert x.dtype == y.dtype == torch.float64
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    spec = parse_spec(RESUME_SPEC)
    straight = train(
        spec, callbacks=[Recorder(save_at=3, path=tmp_path / "c.pt")], dtype=torch.float64
    )
    resumed = train(spec, resume_from=Checkpoint.load(tmp_path / "c.pt"), dtype=torch.float64)
    assert resumed.steps == straight.steps
    assert all(
        torch.equal(x, y) for x, y in zip(_weights(straight), _weights(resumed), strict=True)
    )
    assert [h.train for h in resumed.history] == [h.train for h in straight.history]
    with pytest.raises(CheckpointError, match="float64"):  # a float32 run cannot take it
        train(spec, resume_from=Checkpoint.load(tmp_path / "c.pt"))
    with pytest.raises(ValueError, match="dtype"):
        train(spec, dtype=torch.float16)


def test_default_dtype_is_float32() -> None:
    result = train(parse_spec({"dataset": "iris", "optimizer": {"epochs": 1}}))
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
