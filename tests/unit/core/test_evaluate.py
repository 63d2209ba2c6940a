"""Per-epoch evaluation: several blocks of rows in one pass equal each block on its own."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.callbacks import EpochRecord
from core.evaluate import block_numbers, confusion_matrix, evaluate, evaluate_parts
from core.losses import encode_targets, loss_value
from core.model import build_mlp
from core.sizes import EVAL_CHUNK_BYTES, rows_per_chunk
from core.spec import ModelSpec


@pytest.mark.parametrize(
    ("loss", "task", "width"),
    [
        ("cross_entropy", "classification", 3),
        ("logistic", "classification", 1),
        ("squared", "regression", 1),
    ],
)
def test_blocks_in_one_pass_equal_each_block_alone(loss: str, task: str, width: int) -> None:
    g = torch.Generator().manual_seed(3)
    model = build_mlp(
        ModelSpec(hidden=[6, 5], activation="relu"), 4, width, generator=g, dtype=torch.float64
    )
    before = [w.detach().clone() for w in model.weights]
    with torch.no_grad():
        for w in model.weights:
            w.add_(torch.randn(w.shape, generator=g, dtype=torch.float64), alpha=0.1)
    X = torch.randn(17, 4, generator=g, dtype=torch.float64)
    if task == "regression":
        y = torch.randn(17, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, 2 if loss == "logistic" else 3, (17,), generator=g)
    T = encode_targets(loss, task, y, width)
    (first, second, empty), layers = evaluate_parts(
        model, X, y, T, [11, 6, 0], loss=loss, task=task, y_scale=2.0, weights_before=before
    )
    alone_first, alone_layers = evaluate(
        model, X[:11], y[:11], T[:11], loss=loss, task=task, y_scale=2.0, weights_before=before
    )
    alone_second, _ = evaluate(model, X[11:], y[11:], T[11:], loss=loss, task=task, y_scale=2.0)
    assert empty == {}
    assert first == pytest.approx(alone_first, rel=1e-12)
    assert second == pytest.approx(alone_second, rel=1e-12)
    assert set(first) == (
        {"loss", "accuracy", "macro_precision", "macro_recall", "macro_f1"}
        if task == "classification"
        else {"loss", "rmse", "r2", "mae"}
    )
    with torch.no_grad():
        expected_loss = float(loss_value(loss, model(X[11:]), T[11:]))
    assert second["loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert len(layers) == len(alone_layers) == 3
    for got, want, w, b in zip(layers, alone_layers, model.weights, before, strict=True):
        assert got == pytest.approx(want, rel=1e-12)
        ratio = float(torch.linalg.vector_norm(w.detach() - b) / torch.linalg.vector_norm(b))
        assert got["update_ratio"] == pytest.approx(ratio, rel=1e-12)
        assert got["weight_norm"] == pytest.approx(
            float(torch.linalg.vector_norm(w.detach())), rel=1e-12
        )
    assert layers[-1]["dead_fraction"] == 0.0


def test_sizes_must_cover_the_rows() -> None:
    model = build_mlp(ModelSpec(hidden=[3]), 2, 2)
    X = torch.zeros(5, 2)
    y = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="sizes"):
        evaluate_parts(
            model,
            X,
            y,
            encode_targets("cross_entropy", "classification", y, 2),
            [4],
            loss="cross_entropy",
            task="classification",
        )


def test_epoch_record_to_dict_is_asdict() -> None:
    record = EpochRecord(
        epoch=3,
        step=30,
        lr=0.1,
        seconds=0.5,
        samples_per_s=100.0,
        grad_norm=1.5,
        train={"loss": 0.2, "accuracy": 0.9},
        val={"loss": 0.3},
        layers=[{"dead_fraction": 0.0, "update_ratio": 0.01, "weight_norm": 2.0}],
    )
    d = record.to_dict()
    assert d == dataclasses.asdict(record)
    d["train"]["loss"] = 9.0
    d["layers"][0]["weight_norm"] = 9.0
    assert record.train["loss"] == 0.2 and record.layers[0]["weight_norm"] == 2.0
    assert EpochRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu"])
@pytest.mark.parametrize(
    ("loss", "task", "width"),
    [
        ("cross_entropy", "classification", 3),
        ("logistic", "classification", 1),
        ("squared", "regression", 1),
    ],
)
def test_evaluation_in_chunks_equals_one_pass(
    activation: str, loss: str, task: str, width: int
) -> None:
    """Chunks of 1, 3 and 8 rows (blocks cut across them) give the numbers of one pass over
    all 23 rows; the dead fractions are exactly those of their definition on the first block."""
    g = torch.Generator().manual_seed(5)
    model = build_mlp(
        ModelSpec(hidden=[7, 5], activation=activation), 4, width, generator=g, dtype=torch.float64
    )
    before = [w.detach().clone() for w in model.weights]
    with torch.no_grad():  # wide pre-activations: units dead or saturated on some rows only
        model.weights[0].mul_(6.0)
        model.biases[0].copy_(torch.linspace(-30.0, 30.0, 7, dtype=torch.float64))
    X = torch.randn(23, 4, generator=g, dtype=torch.float64)
    X[13:] *= 4.0  # the second block wakes units that are dead on the first
    if task == "regression":
        y = torch.randn(23, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, 2 if loss == "logistic" else 3, (23,), generator=g)
    T = encode_targets(loss, task, y, width)
    kw = {"loss": loss, "task": task, "y_scale": 2.0, "weights_before": before}
    whole, whole_layers = evaluate_parts(model, X, y, T, [13, 10, 0], chunk_rows=23, **kw)
    for rows in (1, 3, 8):
        parts, layers = evaluate_parts(model, X, y, T, [13, 10, 0], chunk_rows=rows, **kw)
        assert parts[2] == {}
        for got, want in zip(parts[:2], whole[:2], strict=True):
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
        for got, want in zip(layers, whole_layers, strict=True):
            assert got["dead_fraction"] == want["dead_fraction"]
            assert got == pytest.approx(want, rel=1e-12)

    def dead(rows: int) -> float:
        z = (X[:rows] @ model.weights[0].T + model.biases[0]).detach()
        if activation == "relu":
            return float((z.amax(dim=0) <= 0).double().mean())
        if activation in ("sigmoid", "tanh"):
            limit = {"sigmoid": 6.9, "tanh": 4.15}[activation]
            return float((z.abs().amin(dim=0) > limit).double().mean())
        return 0.0

    assert whole_layers[0]["dead_fraction"] == dead(13)
    if activation != "leaky_relu":
        assert 0.0 < dead(13) < 1.0  # some units dead on the first block, not all
        assert dead(23) != dead(13)  # and the rows of the second block do not count


def test_a_chunk_holds_the_budget_of_its_widest_layer() -> None:
    assert rows_per_chunk([2, 4096, 2], 4) == EVAL_CHUNK_BYTES // (4096 * 4)
    assert rows_per_chunk([2, 4096, 2], 4, budget=64 * 2**20) == 4096
    assert rows_per_chunk([10_000, 64, 8], 8) == EVAL_CHUNK_BYTES // (64 * 8)  # not the input
    assert rows_per_chunk([2, 65_536, 2], 8, budget=1000) == 1  # at least one row


@pytest.mark.parametrize("loss", ["cross_entropy", "logistic", "squared"])
def test_macro_scores_and_the_confusion_matrix_are_scikit_learns(loss: str) -> None:
    """Per block: macro precision, recall and F1 as scikit-learn's (zero_division=0, over the
    classes among targets and predictions); the confusion matrix and per-class scores too,
    the forward pass in chunks of 4 rows."""
    from sklearn.metrics import confusion_matrix as sk_confusion
    from sklearn.metrics import precision_recall_fscore_support

    from core.evaluate import confusion
    from core.losses import predict

    classes = 2 if loss == "logistic" else 4
    width = 1 if loss == "logistic" else classes
    model = build_mlp(ModelSpec(hidden=[5]), 3, width, generator=torch.Generator().manual_seed(2))
    model = model.double()
    g = torch.Generator().manual_seed(3)
    X = torch.randn(23, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (23,), generator=g)
    T = encode_targets(loss, "classification", y, width)
    (first, second), _ = evaluate_parts(
        model, X, y, T, [13, 10], loss=loss, task="classification", chunk_rows=4
    )
    with torch.no_grad():
        pred = predict(loss, "classification", model(X)).numpy()
    for part, (a, b) in ((first, (0, 13)), (second, (13, 23))):
        p, r, f1, _ = precision_recall_fscore_support(
            y[a:b].numpy(), pred[a:b], average="macro", zero_division=0
        )
        assert (part["macro_precision"], part["macro_recall"], part["macro_f1"]) == (
            pytest.approx(p, rel=1e-12),
            pytest.approx(r, rel=1e-12),
            pytest.approx(f1, rel=1e-12),
        )
    assert len(set(pred.tolist())) > 1  # not a constant classifier: the scores differ
    got = confusion(model, X, y, loss=loss, chunk_rows=4)
    labels = list(range(classes))
    assert got["matrix"] == sk_confusion(y.numpy(), pred, labels=labels).tolist()
    p, r, f1, support = precision_recall_fscore_support(
        y.numpy(), pred, labels=labels, zero_division=0
    )
    assert got["precision"] == pytest.approx(p.tolist(), rel=1e-12)
    assert got["recall"] == pytest.approx(r.tolist(), rel=1e-12)
    assert got["f1"] == pytest.approx(f1.tolist(), rel=1e-12)
    assert got["support"] == support.tolist()


def test_mae_is_in_the_targets_units() -> None:
    model = build_mlp(ModelSpec(hidden=[4]), 2, 1, generator=torch.Generator().manual_seed(1))
    model = model.double()
    X = torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    T = encode_targets("squared", "regression", y, 1)
    metrics, _ = evaluate(model, X, y, T, loss="squared", task="regression", y_scale=3.0)
    with torch.no_grad():
        want = float((model(X)[:, 0] - y).abs().mean()) * 3.0
    assert metrics["mae"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_pack_s_block_numbers_are_each_member_s_alone(task: str) -> None:
    """``block_numbers`` over K members' rows at once (a pack's evaluation): member k's
    numbers are exactly those of its rows alone, empty blocks skipped."""
    gen = torch.Generator().manual_seed(3)
    K, n, classes, bounds = 5, 40, 4, [0, 25, 25, 40]
    y = torch.randint(0, classes, (n,), generator=gen)
    losses = torch.rand(K, n, generator=gen)
    if task == "classification":
        preds = torch.randint(0, classes, (K, n), generator=gen)
        hits = (preds == y).to(torch.float64)
    else:
        y = torch.randn(n, generator=gen)
        preds = torch.rand(K, n, generator=gen, dtype=torch.float64)
        hits = preds * preds
    together = block_numbers(task, losses, hits, preds, y, bounds, classes)
    assert len(together) == (10 if task == "classification" else 8)
    assert all(t.shape == (K,) for t in together)
    for k in range(K):
        alone = block_numbers(task, losses[k], hits[k], preds[k], y, bounds, classes)
        assert all(a.dim() == 0 for a in alone)
        assert [t[k].item() for t in together] == [a.item() for a in alone], k
    if task == "classification":  # the counts themselves, by hand
        counts = confusion_matrix(y, preds, classes)
        for k in range(K):
            by_hand = torch.zeros(classes, classes, dtype=torch.int64)
            for target, pred in zip(y.tolist(), preds[k].tolist(), strict=True):
                by_hand[target, pred] += 1
            assert torch.equal(counts[k], by_hand), k
