"""One forward pass: the model, the evaluation and the validator run ``core.model.forward``;
the manual engine's buffered pass (``core.backprop.Backprop``) computes the same numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import core.backprop
from core.activations import ACTIVATIONS, get_activation
from core.backprop import Backprop
from core.losses import LOSSES, encode_targets
from core.model import MLP, build_mlp, forward, sample_masks
from core.spec import ModelSpec


def _model(activation: str, dropout: float, width: int = 3, seed: int = 4) -> MLP:
    g = torch.Generator().manual_seed(seed)
    model = build_mlp(
        ModelSpec(hidden=[5, 4, 6], activation=activation),
        3,
        width,
        dropout=dropout,
        generator=g,
        dtype=torch.float64,
    )
    with torch.no_grad():  # non-zero biases so that they matter
        for b in model.biases:
            b.normal_(0.0, 0.1, generator=g)
    return model


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["straight", "dropout"])
@pytest.mark.parametrize("generic", [False, True], ids=["in_place", "generic"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("loss", LOSSES)
def test_buffered_pass_computes_the_output_of_the_forward_pass(
    activation: str, loss: str, generic: bool, dropout: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backprop keeps its own forward half (buffers made once, φ in place): after each call
    its output buffer holds F exactly as ``forward`` computes it, in float64, on every path
    (straight, general with masks, and an activation without the in-place pair)."""
    if generic:
        plain = dataclasses.replace(ACTIVATIONS[activation], forward_=None, backward_h=None)
        monkeypatch.setitem(ACTIVATIONS, activation, plain)
    width = 1 if loss == "logistic" else 3
    model = _model(activation, dropout, width)
    g = torch.Generator().manual_seed(2)
    grads = [torch.empty_like(p) for p in model.parameters()]
    plan = Backprop(
        model.weights,
        model.biases,
        grads,
        activation=activation,
        loss=loss,
        batch=7,
        masked=dropout > 0.0,
    )
    for _ in range(2):
        X = torch.randn(7, 3, generator=g, dtype=torch.float64)
        y = torch.randint(0, 2 if loss == "logistic" else 3, (7,), generator=g)
        T = encode_targets(loss, "classification", y, width)
        masks = sample_masks(model, 7, generator=g)
        with torch.no_grad():
            plan.run(X, T, masks)
            expected = forward(model.weights, model.biases, X, activation=activation, masks=masks)
        assert plan.z[-1].dtype == torch.float64
        assert torch.equal(plan.z[-1], expected), float((plan.z[-1] - expected).abs().max())
        with torch.no_grad():  # the pass reads the weights as they are now
            for p in model.parameters():
                p.mul_(0.9)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_model_validator_and_lecture_pass_are_one_function(activation: str) -> None:
    model = _model(activation, 0.0)
    X = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert core.backprop.forward is forward  # still public where it always was
    act = get_activation(activation)
    h = X
    for W, b in zip(model.weights[:-1], model.biases[:-1], strict=True):
        h = act.forward(torch.addmm(b, h, W.t()))
    want = torch.addmm(model.biases[-1], h, model.weights[-1].t())
    with torch.no_grad():
        assert torch.equal(model(X), want)
        assert torch.equal(
            forward(model.weights, model.biases, X, activation=activation), want.detach()
        )


def test_hidden_stops_early_and_on_hidden_sees_the_pre_activations() -> None:
    model = _model("tanh", 0.0)
    X = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seen: list[tuple[int, torch.Tensor]] = []
    with torch.no_grad():
        F = forward(
            model.weights,
            model.biases,
            X,
            activation="tanh",
            on_hidden=lambda l, z: seen.append((l, z.clone())),
        )
        assert torch.equal(F, model(X))
        assert [l for l, _ in seen] == [0, 1, 2]
        for k in range(4):
            H = forward(model.weights, model.biases, X, activation="tanh", hidden=k)
            want = X if k == 0 else torch.tanh(seen[k - 1][1])
            assert torch.equal(H, want)


def test_dropout_without_masks_in_training_mode_only() -> None:
    model = _model("relu", 0.5)
    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        model.eval()
        plain = model(X)
        assert torch.equal(plain, model(X))
        model.train()
        torch.manual_seed(0)
        a = model(X)
        torch.manual_seed(0)
        assert torch.equal(a, model(X)) and not torch.equal(a, plain)
        masks = [torch.ones(64, w, dtype=torch.float64) for w in model.hidden_widths]
        assert torch.equal(model(X, masks), plain)  # masks given: no sampling
