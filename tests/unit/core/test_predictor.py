"""core.predictor: the numpy forward pass equals the exported torch model's on the same raw
rows, for every activation, loss and task; its file round-trips without pickle."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from typing import Any

import numpy as np
import pytest
import torch

from core.activations import ACTIVATIONS as TORCH_ACTIVATIONS
from core.export import checkpoint_predictor, export_model, export_predictors, predictor
from core.predictor import ACTIVATIONS, PredictorError, load_predictor
from core.spec import parse_spec
from core.train import TrainResult, train


def _train(spec: dict[str, Any], dtype: torch.dtype = torch.float32) -> TrainResult:
    return train(parse_spec({"optimizer": {"epochs": 3}, **spec}), dtype=dtype)


def _same_as_exported(result: TrainResult, rtol: float = 1e-5, atol: float = 1e-6) -> np.ndarray:
    data = result.data
    raw = data.raw(data.X_test)
    with torch.no_grad():
        expected = export_model(result)(torch.as_tensor(raw)).numpy()
    got = predictor(result).outputs(raw)
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    return got


def test_every_activation_of_core_has_its_numpy_twin() -> None:
    assert set(ACTIVATIONS) == set(TORCH_ACTIVATIONS)
    z = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    for name, act in TORCH_ACTIVATIONS.items():
        np.testing.assert_allclose(
            ACTIVATIONS[name](z.numpy()), act.forward(z).numpy(), rtol=1e-12, atol=1e-12,
            err_msg=name,
        )  # fmt: skip


@pytest.mark.parametrize("activation", sorted(TORCH_ACTIVATIONS))
def test_a_classifier_of_each_activation_gives_the_exported_models_probabilities(
    activation: str,
) -> None:
    result = _train({"dataset": "iris", "model": {"hidden": [8, 6], "activation": activation}})
    probs = _same_as_exported(result)
    answer = predictor(result).predict(result.data.raw(result.data.X_test))
    assert answer["classes"] == result.data.classes == ["setosa", "versicolor", "virginica"]
    assert answer["predictions"] == [result.data.classes[i] for i in probs.argmax(1)]


@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_a_binary_classifier_of_another_loss_gives_the_exported_models_outputs(loss: str) -> None:
    _same_as_exported(_train({"dataset": "moons", "loss": loss, "model": {"hidden": [8]}}))


def test_a_regressor_gives_values_in_the_targets_units() -> None:
    result = _train({"dataset": "diabetes", "model": {"hidden": [16]}})
    assert result.target_scale != 1.0  # the output mapping is exercised
    values = _same_as_exported(result, rtol=1e-5, atol=1e-3)  # targets in the hundreds
    answer = predictor(result).predict(result.data.raw(result.data.X_test))
    assert set(answer) == {"predictions"}
    np.testing.assert_allclose(answer["predictions"], values[:, 0], rtol=1e-6)
    # a checkpoint's, built from the data alone while training goes on, is the same model
    params = list(result.model.parameters())
    during = checkpoint_predictor(params, result.data, activation="relu", loss="squared")
    raw = result.data.raw(result.data.X_test)
    np.testing.assert_array_equal(during.outputs(raw), predictor(result).outputs(raw))


def test_a_float64_model_is_run_in_float64() -> None:
    result = _train({"dataset": "iris", "model": {"activation": "gelu"}}, dtype=torch.float64)
    assert _same_as_exported(result, rtol=1e-12, atol=1e-12).dtype == np.float64


def test_the_file_holds_the_models_and_the_last_epochs_weights_and_no_pickle() -> None:
    result = _train({"dataset": "iris"})
    last = [p.detach() + 1.0 for p in result.model.parameters()]  # distinct weights
    data = export_predictors(result, last=last)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert all(n.endswith(".npy") for n in names)
    raw = result.data.raw(result.data.X_test)
    best, final = load_predictor(data, "best"), load_predictor(data, "last")
    np.testing.assert_array_equal(best.outputs(raw), predictor(result).outputs(raw))
    np.testing.assert_array_equal(final.outputs(raw), predictor(result, last).outputs(raw))
    assert not np.allclose(best.outputs(raw), final.outputs(raw))
    assert best.feature_names == final.feature_names == result.data.feature_names
    with pytest.raises(PredictorError, match="no weights 'first'"):
        load_predictor(data, "first")
    with pytest.raises(PredictorError, match="not a gradq predictors file"):
        load_predictor(b"PK\x03\x04 not a zip", "best")


def test_reading_predictions_imports_no_torch() -> None:
    code = (
        "import sys, core.predictor, api.predictions\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn', 'scipy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
