"""The hand-written backprop equals autograd and central differences, in float64."""

from __future__ import annotations

import decimal

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.activations import ACTIVATIONS, get_activation, inplace
from core.backprop import Backprop, manual_gradients
from core.gradcheck import check_gradients, gradient_scale
from core.losses import LOSSES, encode_targets, loss_delta, loss_value
from core.model import build_mlp, sample_masks
from core.spec import ModelSpec

REL_TOL = 1e-10  # manual vs autograd, float64, relative to the gradient's scale (see below)
FD_TOL = 1e-6  # manual vs central differences (h = 1e-6), float64


def _problem(
    seed: int, hidden: list[int], activation: str, loss: str, n: int, dropout: float, d: int = 3
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, list[torch.Tensor] | None, str]:
    g = torch.Generator().manual_seed(seed)
    regression = loss == "squared" and seed % 2 == 0
    classes = 2 if loss == "logistic" else 3
    width = 1 if regression or loss == "logistic" else classes
    model = build_mlp(
        ModelSpec(hidden=hidden, activation=activation),
        d,
        width,
        dropout=dropout,
        generator=g,
        dtype=torch.float64,
    )
    with torch.no_grad():  # non-zero biases so that they matter
        for b in model.biases:
            b.normal_(0.0, 0.1, generator=g)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (
        torch.randn(n, generator=g, dtype=torch.float64)
        if regression
        else torch.randint(0, classes, (n,), generator=g)
    )
    masks = sample_masks(model, n, generator=g)
    return model, X, y, masks, "regression" if regression else "classification"


def _autograd(model, X, y, masks, loss, task, wd):  # type: ignore[no-untyped-def]
    T = encode_targets(loss, task, y, model.widths[-1])
    value = loss_value(loss, model(X, masks), T)
    value = value + wd * sum((w * w).sum() for w in model.weights)
    return torch.autograd.grad(value, list(model.parameters()))


@settings(max_examples=120, deadline=None)
# found by hypothesis: |yF| > 20, where softplus used to switch to an approximation
@example(
    seed=6,
    hidden=[3, 6, 6],
    activation="identity",
    loss="logistic",
    n=8,
    weight_decay=0.0,
    dropout=0.7,
)
# found by hypothesis: a saturated softmax (P = 1 − 5.6e-7 for the true class), where
# softmax(F) − T loses ~1e-10 of the gradient to the rounding of P near 1 (core.losses)
@example(
    seed=9676,
    hidden=[5, 4, 7],
    activation="identity",
    loss="cross_entropy",
    n=1,
    weight_decay=0.0,
    dropout=0.7,
)
@given(
    seed=st.integers(0, 10_000),
    hidden=st.lists(st.integers(1, 7), min_size=0, max_size=3),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    loss=st.sampled_from(LOSSES),
    n=st.integers(1, 9),
    weight_decay=st.sampled_from([0.0, 1e-3, 0.5]),
    dropout=st.sampled_from([0.0, 0.3, 0.7]),
)
def test_manual_equals_autograd(
    seed: int,
    hidden: list[int],
    activation: str,
    loss: str,
    n: int,
    weight_decay: float,
    dropout: float,
) -> None:
    model, X, y, masks, task = _problem(seed, hidden, activation, loss, n, dropout)
    manual = manual_gradients(
        model, X, y, loss=loss, weight_decay=weight_decay, dropout_masks=masks
    )
    auto = _autograd(model, X, y, masks, loss, task, weight_decay)
    assert len(manual) == len(auto) == 2 * (len(hidden) + 1)
    # relative to the largest entry of the gradient or of 2λW (core.gradcheck explains why a
    # tensor's own scale is ill-conditioned where its data gradient cancels the decay term)
    scale = gradient_scale(auto, model.weights, weight_decay)
    for m, a, p in zip(manual, auto, model.parameters(), strict=True):
        assert m.shape == p.shape and m.dtype == torch.float64
        assert float((m - a).abs().max()) / scale < REL_TOL


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(("weight_decay", "dropout"), [(0.0, 0.0), (0.01, 0.0), (0.01, 0.5)])
def test_manual_equals_central_differences_every_coordinate(
    activation: str, loss: str, weight_decay: float, dropout: float
) -> None:
    model, X, y, masks, task = _problem(7, [5, 4], activation, loss, 6, dropout)
    T = encode_targets(loss, task, y, model.widths[-1])
    report = check_gradients(
        model.weights,
        model.biases,
        X,
        T,
        activation=activation,
        loss=loss,
        weight_decay=weight_decay,
        masks=masks,
        tolerance=REL_TOL,
        fd_tolerance=FD_TOL,
        fd_samples=None,
    )
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(t.fd_coordinates for t in report.tensors) == n_params
    assert report.passed, report.to_json()
    assert report.max_rel_error < REL_TOL
    assert report.max_fd_rel_error < FD_TOL


def test_validator_catches_a_wrong_derivative(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deliberately wrong tanh′ must fail both comparisons, naming the layers it broke."""
    import core.activations as acts

    broken = acts.ActivationFn(
        "tanh", torch.tanh, lambda z, h, g: g * (1.0 - h), torch.nn.Tanh
    )  # tanh′ is 1 − h², not 1 − h
    monkeypatch.setitem(acts.ACTIVATIONS, "tanh", broken)
    model, X, y, _masks, task = _problem(3, [4, 4], "tanh", "cross_entropy", 5, 0.0)
    T = encode_targets("cross_entropy", task, y, model.widths[-1])
    report = check_gradients(
        model.weights,
        model.biases,
        X,
        T,
        activation="tanh",
        loss="cross_entropy",
        fd_samples=None,
    )
    assert not report.passed
    failed = {t.name for t in report.tensors if not t.passed}
    assert {"W1", "b1", "W2", "b2"} <= failed  # everything below the last hidden layer
    assert "W3" not in failed and "b3" not in failed  # the output layer needs no φ′
    assert report.to_dict()["passed"] is False and "FAILED" in report.summary()


def test_output_delta_is_prediction_minus_target_for_softmax_cross_entropy() -> None:
    """With no hidden layer, ∇b = Σ (softmax(F) − onehot)/n, the pair named in core.losses."""
    model, X, y, _, _task = _problem(11, [], "identity", "cross_entropy", 4, 0.0)
    grads = manual_gradients(model, X, y, loss="cross_entropy")
    F = model(X)
    expected = (torch.softmax(F, 1) - torch.nn.functional.one_hot(y, 3)).sum(0) / 4
    torch.testing.assert_close(grads[1], expected.detach(), rtol=0, atol=1e-15)


def _exact_cross_entropy(row: list[float], k: int) -> tuple[float, list[float]]:
    """−log softmax_k(row) and softmax(row) − onehot(k), with 60 significant digits."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        f = [decimal.Decimal(v) for v in row]
        e = [(v - max(f)).exp() for v in f]
        total = sum(e)
        value = total.ln() + max(f) - f[k]
        delta = [v / total - (1 if j == k else 0) for j, v in enumerate(e)]
        return float(value), [float(d) for d in delta]


SATURATED = [
    ([0.0, 15.0, 30.0], 2),  # right and confident: P_k = 1 − 3e-7
    ([36.0, -5.0, 0.0], 0),  # P_k = 1 − 2e-16: P_k − 1 is all rounding
    ([0.0, 1.0, 2.0], 0),  # wrong, no saturation
    ([0.0, 0.0, 700.0], 0),  # wrong and confident: e^(700) beside 1
    ([1.0, 1.0, 1.0], 1),  # a tie
]


@pytest.mark.parametrize(("row", "k"), SATURATED)
def test_cross_entropy_value_and_delta_are_exact_to_a_few_ulps(row: list[float], k: int) -> None:
    """Entry by entry against a 60-digit reference: the manual δ⁽ᴸ⁾, the loss, and the
    autograd gradient of the loss (what the manual gradients are checked against). The plain
    softmax(F) − T would miss the saturated rows' true-class entries by up to 100 %."""
    value, delta = _exact_cross_entropy(row, k)
    F = torch.tensor([row], dtype=torch.float64, requires_grad=True)
    T = torch.nn.functional.one_hot(torch.tensor([k]), 3).to(torch.float64)

    def rel(got: torch.Tensor, want: list[float]) -> float:
        want_t = torch.tensor(want, dtype=torch.float64)
        return float(((got.reshape(-1) - want_t).abs() / want_t.abs()).max())

    manual = loss_delta("cross_entropy", F.detach(), T)
    (auto,) = torch.autograd.grad(loss_value("cross_entropy", F, T), F)
    assert rel(loss_value("cross_entropy", F.detach(), T), [value]) < 1e-14
    assert rel(manual, delta) < 1e-14
    assert rel(auto, delta) < 1e-14
    if row == [36.0, -5.0, 0.0]:  # the check could fail: the plain form is off here
        plain = torch.softmax(F.detach(), 1) - T
        assert rel(plain, delta) > 1e-3


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["straight", "dropout"])
@pytest.mark.parametrize("generic", [False, True], ids=["in_place", "generic"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("loss", LOSSES)
def test_training_pass_reuses_its_buffers_and_equals_autograd(
    activation: str, loss: str, generic: bool, dropout: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training loop's Backprop: built once, called on batches gathered into a strided
    [X | T] buffer, with and without dropout, several times; each call's gradients equal
    autograd's. The generic path (an activation without the in-place pair) must agree too."""
    import dataclasses

    import core.activations as acts

    if generic:
        plain = dataclasses.replace(acts.ACTIVATIONS[activation], forward_=None, backward_h=None)
        monkeypatch.setitem(acts.ACTIVATIONS, activation, plain)
    model, X, y, _masks, task = _problem(5, [4, 5], activation, loss, 12, dropout)
    T = encode_targets(loss, task, y, model.widths[-1]).to(torch.float64)
    XT = torch.cat([X, T], dim=1)
    grads = [torch.full_like(p, float("nan")) for p in model.parameters()]
    batch = 6
    plan = Backprop(
        model.weights,
        model.biases,
        grads,
        activation=activation,
        loss=loss,
        batch=batch,
        masked=dropout > 0.0,
    )
    straight = dropout == 0.0 and not generic and inplace(activation)
    assert (plan.run == plan._straight) == straight
    buf = torch.empty(batch, XT.shape[1], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        idx = torch.randperm(12, generator=g)[:batch]
        torch.index_select(XT, 0, idx, out=buf)
        masks = sample_masks(model, batch, generator=g)
        with torch.no_grad():
            plan.run(buf[:, : X.shape[1]], buf[:, X.shape[1] :], masks)
        auto = _autograd(model, X[idx], y[idx], masks, loss, task, 0.0)
        scale = gradient_scale(auto, model.weights, 0.0)
        for m, a in zip(grads, auto, strict=True):
            assert float((m - a).abs().max()) / scale < REL_TOL, (step, activation, loss)
        with torch.no_grad():  # the pass must read the weights as they are now
            for p in model.parameters():
                p.mul_(0.9)


@pytest.mark.parametrize("activation", ["elu", "gelu", "silu", "softplus"])
def test_each_derivative_equals_autograd_across_the_range(activation: str) -> None:
    """φ′ by hand = autograd's, in float64, over inputs from −40 to 40: the tails, 0, and
    softplus's threshold (20) from both sides, each entry to 1e-10 relative. The in-place
    pair's (from h) agrees to 1e-10 of the gradient's scale, as the suite measures: elu′ =
    h + 1 loses eᶻ below 1e-16 of the scale, as autograd's own in-place elu does."""
    act = get_activation(activation)
    z = torch.cat(
        [
            torch.linspace(-40.0, 40.0, 801, dtype=torch.float64),
            torch.tensor([0.0, 20.0 - 1e-9, 20.0, 20.0 + 1e-9, -1e-300], dtype=torch.float64),
        ]
    ).requires_grad_(True)
    g = torch.linspace(-2.0, 3.0, z.numel(), dtype=torch.float64)
    (auto,) = torch.autograd.grad(act.module()(z), z, g)
    torch.testing.assert_close(act.forward(z.detach()), act.module()(z).detach(), rtol=0, atol=0)
    zd = z.detach()
    manual = act.backward(zd, act.forward(zd), g.clone())
    assert float(((manual - auto).abs() / auto.abs().clamp_min(1e-300)).max()) < REL_TOL
    if act.forward_ is not None and act.backward_h is not None:
        h = act.forward_(zd.clone())
        from_h = act.backward_h(h, g.clone())
        assert float((from_h - auto).abs().max() / auto.abs().max()) < REL_TOL
