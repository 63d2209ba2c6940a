"""Every invalid spec is refused with an error naming the field and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.spec import InvalidSpec, JobSpec, SpecLimits, load_spec, parse_spec


def _errors(data: Any, limits: SpecLimits | None = None) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(data, limits=limits)
    return {e.field: e.message for e in info.value.errors}


def test_a_spec_with_only_a_dataset_has_working_defaults() -> None:
    spec = parse_spec({"dataset": "digits"})
    assert spec.dataset.name == "digits"
    assert spec.resolved_loss() == "cross_entropy"
    assert parse_spec({"dataset": "diabetes"}).resolved_loss() == "squared"
    assert spec.model.hidden == [64] and spec.engine == "auto"


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        (
            {"dataset": "digits", "model": {"hidden": [64, 0]}},
            "model.hidden[1]",
            "greater than or equal to 1",
        ),
        ({"dataset": "digits", "model": {"hidden": [8, -3, 4]}}, "model.hidden[1]", "greater than"),
        ({"dataset": "digits", "model": {"activation": "swish"}}, "model.activation", "relu"),
        (
            {"dataset": "digits", "optimizer": {"name": "adam", "momentum": 0.9}},
            "optimizer.momentum",
            "only sgd",
        ),
        (
            {"dataset": "digits", "optimizer": {"name": "rmsprop", "nesterov": True}},
            "optimizer.nesterov",
            "only sgd",
        ),
        ({"dataset": "digits", "optimizer": {"name": "lbfgs"}}, "optimizer.name", "adamw"),
        (
            {"dataset": "digits", "optimizer": {"name": "adam", "betas": [0.9, 1.0]}},
            "optimizer.betas[1]",
            "less than 1",
        ),
        ({"dataset": "digits", "optimizer": {"clip_norm": 0}}, "optimizer.clip_norm", "greater"),
        (
            {"dataset": "digits", "optimizer": {"epochs": 5, "schedule": {"warmup_epochs": 5}}},
            "optimizer.schedule.warmup_epochs",
            "fewer than the epochs",
        ),
        (
            {
                "dataset": "digits",
                "optimizer": {"schedule": {"warmup_epochs": 2, "warmup_steps": 10}},
            },
            "optimizer.schedule.warmup_steps",
            "not both",
        ),
        (
            {"dataset": "digits", "regularization": {"early_stopping": {"monitor": "val_r2"}}},
            "regularization.early_stopping.monitor",
            "val_accuracy",
        ),
        (
            {"dataset": "diabetes", "optimizer": {"schedule": {"monitor": "val_accuracy"}}},
            "optimizer.schedule.monitor",
            "val_r2",
        ),
        (
            {
                "dataset": {"name": "digits", "validation_fraction": 0},
                "regularization": {"early_stopping": {"enabled": False}},
                "optimizer": {"schedule": {"kind": "plateau"}},
            },
            "optimizer.schedule.monitor",
            "validation_fraction > 0",
        ),
        ({"dataset": "digits", "optimizer": {"lr": -0.1}}, "optimizer.lr", "greater than 0"),
        ({"dataset": "digits", "optimizer": {"lr": "fast"}}, "optimizer.lr", "'fast'"),
        ({"dataset": "digits", "optimizer": {"lr": float("nan")}}, "optimizer.lr", "finite"),
        (
            {"dataset": "digits", "optimizer": {"momentum": 1.5}},
            "optimizer.momentum",
            "less than 1",
        ),
        (
            {"dataset": "digits", "optimizer": {"momentum": 0, "nesterov": True}},
            "optimizer.nesterov",
            "momentum > 0",
        ),
        (
            {"dataset": "digits", "optimizer": {"batch_size": 0}},
            "optimizer.batch_size",
            "greater than",
        ),
        (
            {"dataset": "digits", "optimizer": {"schedule": {"kind": "linear"}}},
            "optimizer.schedule.kind",
            "cosine",
        ),
        ({"dataset": "iris", "loss": "logistic"}, "loss", "2 classes"),
        ({"dataset": "diabetes", "loss": "cross_entropy"}, "loss", "classification"),
        (
            {"dataset": "digits", "regularization": {"dropout": 1.0}},
            "regularization.dropout",
            "less than 1",
        ),
        (
            {"dataset": "digits", "regularization": {"weight_decay": -1}},
            "regularization.weight_decay",
            "greater than",
        ),
        (
            {"dataset": "digits", "regularization": {"early_stopping": {"patience": 0}}},
            "regularization.early_stopping.patience",
            "greater than",
        ),
        (
            {"dataset": {"name": "digits", "validation_fraction": 0}},
            "regularization.early_stopping.enabled",
            "validation_fraction",
        ),
        ({"dataset": "imagenet"}, "dataset.name", "digits"),
        ({"dataset": {"name": "csv"}}, "dataset.path", "required"),
        ({"dataset": {"name": "csv", "path": "x.csv"}}, "dataset.target", "required"),
        ({"dataset": {"name": "upload", "target": "y"}}, "dataset.id", "required"),
        ({"dataset": {"name": "digits", "noise": 0.1}}, "dataset.noise", "synthetic"),
        ({"dataset": {"name": "moons", "n_samples": 3}}, "dataset.n_samples", "greater than"),
        (
            {"dataset": {"name": "digits", "test_fraction": 0.5, "validation_fraction": 0.5}},
            "dataset.test_fraction",
            "< 0.9",
        ),
        ({"dataset": "digits", "device": "cuda"}, "resources.gpus", "gpus > 0"),
        ({"dataset": "digits", "device": "tpu"}, "device", "cuda"),
        ({"dataset": "digits", "engine": "jax"}, "engine", "manual"),
        (
            {"dataset": "digits", "optimiser": {"lr": 0.1}},
            "optimiser",
            "unknown field; did you mean 'optimizer'?",
        ),
        (
            {"dataset": "digits", "model": {"hiden": [3]}},
            "model.hiden",
            "unknown field; did you mean 'hidden'?",
        ),
        (
            {"dataset": "digits", "optimizer": {"schedule": {"kindd": "step"}}},
            "optimizer.schedule.kindd",
            "did you mean 'kind'?",
        ),
        ({"dataset": "digits", "zzz": 1}, "zzz", "unknown field"),
        (
            {"dataset": "digits", "regularization": {"dropout": 0.99}},
            "regularization.dropout",
            "at most 0.9, got 0.99",
        ),
        ({"model": {"hidden": [3]}}, "dataset", "required"),
        ({"dataset": "digits", "max_attempts": 0}, "max_attempts", "greater than"),
        ({"dataset": "digits", "seed": -1}, "seed", "greater than"),
        ({"dataset": "digits", "register_as": "team/model"}, "register_as", "no '/' or ':'"),
        ({"dataset": "digits", "register_as": "models:v1"}, "register_as", "no '/' or ':'"),
        ({"dataset": "digits", "register_as": ".."}, "register_as", "is not '.' or '..'"),
    ],
)
def test_invalid_specs_name_their_field(data: dict[str, Any], field: str, needle: str) -> None:
    errors = _errors(data)
    assert field in errors, errors
    assert needle in errors[field], errors[field]
    assert field in _exc_text(data)


def _exc_text(data: Any) -> str:
    try:
        parse_spec(data)
    except InvalidSpec as exc:
        return str(exc)
    raise AssertionError("no error")


def test_parameter_limit_is_configurable() -> None:
    huge = {"dataset": "digits", "model": {"hidden": [65_536, 65_536]}}
    errors = _errors(huge)
    assert "model.hidden" in errors and "exceed the limit" in errors["model.hidden"]
    small = {"dataset": "digits", "model": {"hidden": [64]}}
    assert "model.hidden" in _errors(small, SpecLimits(max_parameters=100))
    assert parse_spec(small, limits=SpecLimits(max_parameters=10_000)).model.hidden == [64]


def test_epoch_limit() -> None:
    errors = _errors(
        {"dataset": "digits", "optimizer": {"epochs": 500}}, SpecLimits(max_epochs=100)
    )
    assert "100" in errors["optimizer.epochs"]


def test_several_errors_are_all_reported() -> None:
    errors = _errors({"dataset": "digits", "optimizer": {"lr": -1, "batch_size": 0}})
    assert {"optimizer.lr", "optimizer.batch_size"} <= set(errors)


def test_non_mapping_is_refused() -> None:
    assert "(root)" in _errors([1, 2])


def test_yaml_and_json_load_the_same_model(tmp_path: Path) -> None:
    data = {
        "name": "digits-64",
        "dataset": {"name": "digits", "test_fraction": 0.25},
        "model": {"hidden": [64, 32], "activation": "tanh", "init": "xavier"},
        "optimizer": {"lr": 0.1, "momentum": 0.8, "nesterov": True, "schedule": {"kind": "cosine"}},
        "regularization": {"weight_decay": 0.001, "dropout": 0.2},
    }
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text(
        "name: digits-64\ndataset: {name: digits, test_fraction: 0.25}\n"
        "model:\n  hidden: [64, 32]\n  activation: tanh\n  init: xavier\n"
        "optimizer: {lr: 0.1, momentum: 0.8, nesterov: true, schedule: {kind: cosine}}\n"
        "regularization: {weight_decay: 0.001, dropout: 0.2}\n"
    )
    json_file = tmp_path / "job.json"
    json_file.write_text(json.dumps(data))
    a, b = load_spec(yaml_file), load_spec(json_file)
    assert a == b == JobSpec.model_validate(data)
    assert a.model.hidden == [64, 32] and a.optimizer.nesterov


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="not valid YAML"):
        load_spec("dataset: [digits\n")
    with pytest.raises(InvalidSpec, match="cannot read"):
        load_spec(tmp_path / "nope.yaml")


def test_hash_fields_is_canonical() -> None:
    a = parse_spec({"dataset": "digits", "seed": 1})
    b = parse_spec({"seed": 1, "dataset": {"name": "digits"}})
    assert a.hash_fields() == b.hash_fields()
    assert a.hash_fields() != parse_spec({"dataset": "digits", "seed": 2}).hash_fields()


def test_a_job_asks_for_at_least_a_quarter_of_a_cpu() -> None:
    """Below ``SpecLimits.min_cpus`` (0.25) Ray would pack that many more worker processes
    onto each CPU. A spec already stored with less still reads back (the worker rebuilds it)."""
    for cpus in (0.001, 0.2):
        errors = _errors({"dataset": "digits", "resources": {"cpus": cpus}})
        assert errors == {"resources.cpus": "at least 0.25 CPUs a job"}, errors
    assert parse_spec({"dataset": "digits", "resources": {"cpus": 0.25}}).resources.cpus == 0.25
    stored = {"dataset": "digits", "resources": {"cpus": 0.001}}
    assert JobSpec.model_validate(stored).resources.cpus == 0.001


def test_each_optimizer_takes_its_own_defaults_and_a_stored_spec_reads_as_sgd() -> None:
    """A spec stored before ``optimizer.name`` existed is today's sgd; every other name
    takes its own lr (and no momentum), and what a spec dumps reads back the same."""
    old = {"dataset": "digits", "optimizer": {"lr": 0.05, "momentum": 0.8, "nesterov": True}}
    opt = parse_spec(old).optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.nesterov) == ("sgd", 0.05, 0.8, True)
    assert parse_spec({"dataset": "digits"}).optimizer.lr == 0.02
    lrs = {"sgd": 0.02, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-2}
    for name, lr in lrs.items():
        spec = parse_spec({"dataset": "digits", "optimizer": {"name": name}})
        assert spec.optimizer.lr == lr
        assert (spec.optimizer.momentum == 0.0) == (name != "sgd")
        again = parse_spec(json.loads(json.dumps(spec.model_dump(mode="json"))))
        assert again.hash_fields() == spec.hash_fields()
    es = parse_spec(
        {"dataset": {"name": "digits", "validation_fraction": 0},
         "regularization": {"early_stopping": {"monitor": "train_loss"}}}
    )  # fmt: skip
    assert es.regularization.early_stopping.enabled


def test_a_retry_lists_transient_classes_and_is_bounded() -> None:
    spec = parse_spec({"dataset": "iris", "retry": {"max": 2, "on": ["tracking_unavailable"]}})
    assert spec.retry is not None and spec.retry.on == ["tracking_unavailable"]
    assert [spec.retry.delay(n) for n in range(3)] == [10.0, 20.0, 40.0]
    assert parse_spec({"dataset": "iris"}).retry is None
    with pytest.raises(InvalidSpec) as bounded:
        parse_spec({"dataset": "iris", "retry": {"max": 11, "on": ["tracking_failed"]}})
    assert [e.field for e in bounded.value.errors] == ["retry.max"]


def test_a_retry_of_an_unknown_or_permanent_class_names_its_place_in_the_list() -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_spec({"dataset": "iris", "retry": {
            "max": 3, "on": ["database_unavailable", "diverged", "network_blip"]}})  # fmt: skip
    errors = {e.field: e.message for e in refused.value.errors}
    assert list(errors) == ["retry.on[1]", "retry.on[2]"]
    assert "'diverged' is permanent" in errors["retry.on[1]"]
    assert "never retried" in errors["retry.on[1]"]
    assert "unknown failure class 'network_blip'" in errors["retry.on[2]"]
    assert "tracking_unavailable" in errors["retry.on[2]"]  # what it may name instead
