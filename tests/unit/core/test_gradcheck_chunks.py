"""``core.gradcheck.central_differences`` over several chunks of coordinates equals the
differences of the objective recomputed with the whole tensor perturbed, coordinate by
coordinate; and a check asked to stop ends between two chunks."""

from __future__ import annotations

import itertools

import pytest
import torch

from core.gradcheck import FD_STEP, GradcheckStopped, central_differences, check_gradients
from core.losses import encode_targets, loss_value
from core.model import forward
from core.sizes import FD_CHUNK


def _problem() -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    widths = [20, 17, 3]  # W1: 340 coordinates, more than two chunks
    W = [
        torch.randn(b, a, generator=gen, dtype=torch.float64) * 0.5
        for a, b in itertools.pairwise(widths)
    ]
    b = [torch.randn(n, generator=gen, dtype=torch.float64) * 0.1 for n in widths[1:]]
    X = torch.randn(6, widths[0], generator=gen, dtype=torch.float64)
    y = torch.randint(0, widths[-1], (6,), generator=gen)
    return W, b, X, encode_targets("cross_entropy", "classification", y, widths[-1])


@pytest.mark.parametrize("tensor", [0, 1, 2, 3])
def test_every_coordinate_equals_the_whole_tensor_perturbed(tensor: int) -> None:
    W, b, X, T = _problem()
    wd = 0.01
    layer, is_bias = divmod(tensor, 2)
    target = b[layer] if is_bias else W[layer]
    assert W[0].numel() > 2 * FD_CHUNK
    coords = torch.arange(target.numel())

    def f(Ws: list[torch.Tensor], bs: list[torch.Tensor]) -> float:
        out = forward(Ws, bs, X, activation="tanh", masks=None)
        return float(loss_value("cross_entropy", out, T) + wd * sum((w * w).sum() for w in Ws))

    expected = []
    for c in coords.tolist():
        values = []
        for step in (FD_STEP, -FD_STEP):
            moved = target.clone().reshape(-1)
            moved[c] += step
            Ws, bs = list(W), list(b)
            (bs if is_bias else Ws)[layer] = moved.view(target.shape)
            values.append(f(Ws, bs))
        expected.append((values[0] - values[1]) / (2 * FD_STEP))
    got = central_differences(W, b, X, T, None, activation="tanh", loss="cross_entropy",
                              weight_decay=wd, tensor=tensor, coords=coords)  # fmt: skip
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-7)


def test_a_check_asked_to_stop_ends_between_chunks() -> None:
    W, b, X, T = _problem()
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 2  # after two chunks of W1's 340 coordinates

    with pytest.raises(GradcheckStopped):
        check_gradients(W, b, X, T, activation="tanh", loss="cross_entropy", fd_samples=None,
                        stop=stop)  # fmt: skip
    assert len(asked) == 3
    report = check_gradients(W, b, X, T, activation="tanh", loss="cross_entropy",
                             fd_samples=None, stop=lambda: False)  # fmt: skip
    assert report.passed and sum(t.fd_coordinates for t in report.tensors) == 340 + 17 + 51 + 3
