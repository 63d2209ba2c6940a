"""The MLflow keys of a job's metrics (``workers.tracking.names``): every flat name an epoch
reports gets a key in a section, the keys sort as MLflow's run page orders its sections
(by the prefix before the last ``/``, unprefixed last) with the learning curves first, and
each key maps back to the flat name it had."""

from __future__ import annotations

from core.callbacks import EpochRecord
from workers.tracking.names import aliases, legacy_key, mlflow_key, mlflow_metrics

CLASSIFICATION = EpochRecord(
    epoch=3, step=30, lr=0.1, seconds=0.2, samples_per_s=500.0, grad_norm=1.5,
    train={"loss": 0.5, "accuracy": 0.8}, val={"loss": 0.6, "accuracy": 0.7},
    layers=[{"dead_fraction": 0.1, "update_ratio": 1e-3, "weight_norm": 2.0}] * 12,
    clipped_steps=4,
)  # fmt: skip
REGRESSION = EpochRecord(
    epoch=3, step=30, lr=0.1, seconds=0.2, samples_per_s=500.0, grad_norm=1.5,
    train={"loss": 0.5, "rmse": 0.7, "r2": 0.4}, val={"loss": 0.6, "rmse": 0.8, "r2": 0.3},
)  # fmt: skip
FINALS = ["final_test_accuracy", "final_train_loss", "final_epochs", "final_steps",
          "gradcheck_count"]  # fmt: skip


def sections(keys: list[str]) -> list[str]:
    """MLflow's order of the run page's sections: prefixes sorted, unprefixed last ("")."""
    prefixes = {k.rpartition("/")[0] for k in keys}
    return sorted(prefixes - {""}) + ([""] if "" in prefixes else [])


def test_the_learning_curves_come_first_and_the_single_values_last() -> None:
    epochs = mlflow_metrics(CLASSIFICATION.metrics())
    keys = [*epochs, mlflow_key("gradcheck_max_rel_error"), *FINALS]
    assert sections(keys) == ["accuracy", "loss", "timing", "training", "weights", ""]
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val"} <= set(keys)
    assert "weights/layer12_weight_norm" in keys and "training/lr" in keys
    assert "training/clipped_steps" in keys
    assert [k for k in keys if "/" not in k] == FINALS
    regression = list(mlflow_metrics(REGRESSION.metrics()))
    assert sections(regression) == ["loss", "r2", "rmse", "timing", "training"]


def test_every_key_maps_back_to_its_former_name() -> None:
    flat = [*CLASSIFICATION.metrics(), *REGRESSION.metrics(), "gradcheck_max_rel_error",
            "gradcheck_max_fd_rel_error", *FINALS]  # fmt: skip
    for name in flat:
        key = mlflow_key(name)
        assert key.count("/") <= 1 and legacy_key(key) == name, (name, key)
        assert aliases(name) == aliases(key) == ((key,) if key == name else (key, name))
    assert mlflow_key("loss/val") == "loss/val" and legacy_key("other/thing") == "other/thing"
