"""Each optimizer on the flat buffer takes torch.optim's steps (float64, 1e-12 a step), with
weight decay mapped as documented (torch's weight_decay = 2λ on the weights' group, biases
in a group without decay) and gradient clipping as torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from core.losses import loss_value
from core.model import MLP, build_mlp
from core.optim import Adam, FlatParameters, GradClipper, coupled_decay, make_optimizer
from core.spec import ModelSpec, OptimizerSpec

STEP_TOL = 1e-12  # per step, relative to the parameters' largest entry
CASES = [
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("sgd", {"momentum": 0.0}),
    ("adam", {"betas": (0.8, 0.99), "eps": 1e-7}),
    ("adam", {"betas": (0.8, 0.99), "eps": 1e-7, "fused": False}),
    ("adamw", {}),
    ("adamw", {"fused": False}),
    ("rmsprop", {"alpha": 0.9}),
]


def _torch_optimizer(name: str, groups: list[dict[str, Any]], opt: OptimizerSpec) -> Any:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
    return torch.optim.RMSprop(groups, lr=opt.lr, alpha=opt.alpha, eps=opt.eps)


def _loss(model: MLP, X: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    return loss_value("cross_entropy", model(X), T)


@pytest.mark.parametrize("clip", [None, 0.8], ids=["no_clip", "clip"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize(
    ("name", "extra"), CASES, ids=[f"{n}{i}" for i, (n, _) in enumerate(CASES)]
)
def test_each_optimizer_takes_torch_optims_steps(
    name: str, extra: dict[str, Any], weight_decay: float, clip: float | None
) -> None:
    """adam and adamw: their one-kernel update, and (``fused: False``) their operations one
    by one."""
    extra = dict(extra)
    fused = extra.pop("fused", True)
    spec = OptimizerSpec.model_validate({"name": name, "lr": 0.05, "clip_norm": clip, **extra})
    model = build_mlp(
        ModelSpec(hidden=[7, 5], activation="tanh"),
        4,
        3,
        generator=torch.Generator().manual_seed(3),
        dtype=torch.float64,
    )
    ref = copy.deepcopy(model)
    flat = FlatParameters(model)
    opt = make_optimizer(spec, flat, weight_decay)
    if isinstance(opt, Adam):
        assert opt.fused  # this torch has the kernel
        opt.fused = fused
    decay = flat.decay_mask(weight_decay) if coupled_decay(spec) else None
    clipper = None if clip is None else GradClipper(flat.grad, clip)
    groups = [
        {"params": ref.weights, "weight_decay": 2.0 * weight_decay},
        {"params": ref.biases, "weight_decay": 0.0},
    ]
    torch_opt = _torch_optimizer(name, groups, spec)
    initial = flat.data.clone()
    g = torch.Generator().manual_seed(4)
    clipped = 0
    for step in range(25):
        lr = spec.lr * (1.0 if step < 10 else 0.3)  # a schedule changes the rate
        X = torch.randn(9, 4, generator=g, dtype=torch.float64)
        T = torch.nn.functional.one_hot(torch.randint(0, 3, (9,), generator=g), 3).double()
        # gradq: the loss's gradient into the flat buffer, clipped, plus 2λW, then the step
        flat.grad.zero_()
        _loss(model, X, T).backward()
        with torch.no_grad():
            if clipper is not None:
                clipper()
            if decay is not None:
                flat.grad.addcmul_(decay, flat.data)
            opt.step(lr)
        # torch.optim with the documented mapping
        torch_opt.zero_grad()
        _loss(ref, X, T).backward()
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
            clipped += int(norm + 1e-6 > clip)
        for group in torch_opt.param_groups:
            group["lr"] = lr
        torch_opt.step()
        scale = max(float(p.detach().abs().max()) for p in ref.parameters())
        for mine, theirs in zip(model.parameters(), ref.parameters(), strict=True):
            err = float((mine.detach() - theirs.detach()).abs().max()) / scale
            assert err < STEP_TOL, (step, err)
        if step == 0:  # a step changes the parameters: the comparison is not vacuous
            assert not torch.equal(flat.data, initial)
    if clipper is not None:
        assert 0 < clipped < 25 and clipper.take() == clipped  # some steps clip, some not
        assert clipper.take() == 0  # take() resets the count


def test_adamw_decays_the_weights_and_not_the_biases() -> None:
    model = build_mlp(ModelSpec(hidden=[3]), 2, 2, dtype=torch.float64)
    flat = FlatParameters(model)
    opt = make_optimizer(OptimizerSpec(name="adamw", lr=0.1, momentum=0.0), flat, 0.25)
    with torch.no_grad():
        for b in model.biases:
            b.fill_(1.0)
    before = [p.detach().clone() for p in model.parameters()]
    flat.grad.zero_()  # a zero gradient: only the decay moves the parameters
    opt.step(0.1)
    for p, b in zip(model.parameters(), before, strict=True):
        factor = 1.0 - 0.1 * 2 * 0.25 if p.dim() == 2 else 1.0
        torch.testing.assert_close(p.detach(), b * factor, rtol=1e-15, atol=0)
