"""The sweep contract (core.sweep): every bad space is refused with its path, trial specs,
ASHA's rungs and rule."""

from __future__ import annotations

import math
from typing import Any

import pytest

from core.data import load_dataset
from core.spec import InvalidSpec, SpecLimits, tracked_epoch_metrics
from core.sweep import grid_points, parse_sweep, promotable, trial_spec

BASE: dict[str, Any] = {"dataset": "digits", "optimizer": {"epochs": 30}}


def sweep(**over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": "s",
        "base": BASE,
        "space": {"optimizer.lr": {"loguniform": [0.001, 0.3]}},
        "search": {"method": "random", "trials": 8},
        "objective": {"metric": "val_accuracy", "mode": "max"},
    }
    out.update(over)
    return out


def refused(data: dict[str, Any], **kw: Any) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as caught:
        parse_sweep(data, **kw)
    return {e.field: e.message for e in caught.value.errors}


def test_the_issue_example_is_accepted_with_its_rungs() -> None:
    s = parse_sweep(
        sweep(
            space={
                "optimizer.lr": {"loguniform": [0.001, 0.3]},
                "regularization.weight_decay": {"loguniform": [1e-6, 1e-2]},
                "regularization.dropout": {"uniform": [0.0, 0.5]},
                "model.hidden": {"choice": [[64], [64, 64], [128, 128]]},
                "seed": {"choice": [0, 1]},
            },
            search={"method": "tpe", "trials": 64, "parallel": 8, "seed": 0, "max_failed": 8},
            early_stopping={"kind": "asha", "min_epochs": 2, "reduction_factor": 3},
        )
    )
    assert s.rungs() == [2, 6, 18]  # 54 is past the 30th, the last, epoch
    assert s.trial_count() == 64 and s.max_failed() == 8 and s.direction == "max"


@pytest.mark.parametrize(
    ("space", "path", "words"),
    [
        ({"optimizer.lrr": {"uniform": [0.1, 0.2]}}, 'space["optimizer.lrr"]', "not a field"),
        ({"optimizer.lr": {"uniform": [0.1, 2e9]}}, 'space["optimizer.lr"]', "less than or equal"),
        ({"optimizer.lr": {"loguniform": [0.0, 0.1]}}, 'space["optimizer.lr"]', "low > 0"),
        ({"optimizer.lr": {"uniform": [0.3, 0.1]}}, 'space["optimizer.lr"]', "below high"),
        ({"optimizer.nesterov": {"uniform": [0, 1]}}, 'space["optimizer.nesterov"]', "real numbers"),
        ({"optimizer.batch_size": {"uniform": [8, 64]}}, 'space["optimizer.batch_size"]',
         "real numbers"),
        ({"model.hidden": {"int": [1, 3]}}, 'space["model.hidden"]', "integers"),
        ({"optimizer.batch_size": {"int": [0.5, 8]}}, 'space["optimizer.batch_size"]', "integers"),
        ({"regularization.dropout": {"choice": [0.1, 1.5]}}, 'space["regularization.dropout"]',
         "1.5"),
        ({"dataset.name": {"choice": ["iris"]}}, 'space["dataset.name"]', "the base's"),
        ({"resources.cpus": {"uniform": [1, 2]}}, 'space["resources.cpus"]', "the base's"),
        ({"optimizer.lr": {"normal": [0, 1]}}, 'space["optimizer.lr"]', "one of uniform"),
        ({"optimizer.lr": {"grid": [0.1, 0.2]}}, 'space["optimizer.lr"]', "method grid"),
        ({"trial": {"choice": [None]}}, 'space["trial"]', "not a field"),
    ],
)  # fmt: skip
def test_each_bad_dimension_is_refused_with_its_path(
    space: dict[str, Any], path: str, words: str
) -> None:
    errors = refused(sweep(space=space))
    assert path in errors, errors
    assert words in errors[path], errors[path]


def test_a_grid_larger_than_trials_or_the_limit_is_refused_at_search_trials() -> None:
    grid = {"optimizer.lr": {"grid": [0.01, 0.1, 0.3]}, "seed": {"grid": [0, 1, 2]}}
    errors = refused(sweep(space=grid, search={"method": "grid", "trials": 8}))
    assert "9 points" in errors["search.trials"]
    errors = refused(sweep(search={"method": "random", "trials": 50}), max_trials=20)
    assert "at most 20" in errors["search.trials"]
    # the grid method takes grid values only
    errors = refused(sweep(search={"method": "grid", "trials": 8}))
    assert "grid values only" in errors['space["optimizer.lr"]']


def test_the_base_the_objective_and_the_rungs_are_checked() -> None:
    errors = refused(sweep(base={"dataset": "digits", "optimizer": {"epochs": 0}}))
    assert "base.optimizer.epochs" in errors
    errors = refused(sweep(objective={"metric": "val_rmse"}))
    assert "val_accuracy" in errors["objective.metric"]  # lists what a classifier reports
    errors = refused(sweep(early_stopping={"kind": "asha", "min_epochs": 30}))
    assert "before the last epoch" in errors["early_stopping.min_epochs"]
    errors = refused(sweep(base={**BASE, "trial": {}}))
    assert "base.trial" in errors
    # the service's limits apply to every bound
    errors = refused(
        sweep(space={"model.hidden": {"choice": [[64], [4096, 4096]]}}),
        limits=SpecLimits(max_parameters=1_000_000),
    )
    assert "exceed the limit" in errors['space["model.hidden"]']


def test_a_trial_spec_has_its_values_the_sweeps_split_and_its_trial() -> None:
    s = parse_sweep(
        sweep(
            base={**BASE, "seed": 7},
            space={"seed": {"choice": [0, 1]}, "model.hidden": {"choice": [[8], [16, 16]]}},
            early_stopping={"kind": "asha", "min_epochs": 3, "reduction_factor": 2},
        )
    )
    one = trial_spec(s, sweep_id="sw", number=0, params={"seed": 0, "model.hidden": [8]},
                     parent_run_id="run0")  # fmt: skip
    two = trial_spec(s, sweep_id="sw", number=1, params={"seed": 1, "model.hidden": [16, 16]},
                     parent_run_id=None)  # fmt: skip
    assert (one.seed, one.model.hidden, two.seed, two.model.hidden) == (0, [8], 1, [16, 16])
    assert one.dataset.seed == two.dataset.seed == 7  # the base's seed splits every trial's data
    assert one.trial is not None and one.trial.rungs == [3, 6, 12, 24]
    assert (one.trial.sweep_id, one.trial.number, one.trial.parent_run_id) == ("sw", 0, "run0")
    assert one.name == "s-t0"
    a, b = load_dataset(one.dataset, seed=one.seed), load_dataset(two.dataset, seed=two.seed)
    assert (a.y_val == b.y_val).all() and (a.X_train == b.X_train).all()


def test_grid_points_cover_the_product_once() -> None:
    s = parse_sweep(
        sweep(
            space={"optimizer.lr": {"grid": [0.01, 0.1]}, "model.hidden": {"grid": [[4], [8]]}},
            search={"method": "grid", "trials": 4},
        )
    )
    points = grid_points(s)
    assert len(points) == s.trial_count() == 4
    assert {(p["optimizer.lr"], tuple(p["model.hidden"])) for p in points} == {
        (0.01, (4,)), (0.01, (8,)), (0.1, (4,)), (0.1, (8,))
    }  # fmt: skip


def test_asha_keeps_the_best_fraction_of_a_rung() -> None:
    # alone, or fewer than the reduction factor: only the best so far goes on
    assert promotable(0.5, [0.5], 3, "max")
    assert not promotable(0.4, [0.5, 0.4], 3, "max")
    assert promotable(0.6, [0.5, 0.6], 3, "max")
    # six values, factor 3: the best two go on
    rung = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert [promotable(v, rung, 3, "max") for v in rung] == [False] * 4 + [True] * 2
    assert [promotable(v, rung, 3, "min") for v in rung] == [True] * 2 + [False] * 4
    # a diverged (non-finite) value ranks last, in both directions
    assert not promotable(math.nan, [0.1, math.nan, 0.2], 2, "max")
    assert not promotable(math.inf, [0.1, math.inf, 0.2], 2, "min")


@pytest.mark.parametrize(
    ("metric", "direction"),
    [
        ("val_accuracy", "max"),
        ("val_r2", "max"),
        ("val_macro_f1", "max"),
        ("train_macro_precision", "max"),
        ("val_macro_recall", "max"),
        ("val_loss", "min"),
        ("val_rmse", "min"),
        ("val_mae", "min"),
    ],
)
def test_an_objective_without_a_mode_goes_the_way_its_metric_improves(
    metric: str, direction: str
) -> None:
    sweep = parse_sweep({
        "base": {"dataset": "diabetes" if metric.endswith(("r2", "rmse", "mae")) else "iris"},
        "space": {"optimizer.lr": {"loguniform": [0.01, 0.1]}},
        "objective": {"metric": metric},
    })  # fmt: skip
    assert sweep.direction == direction


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"search": {"trails": 3}}, "search.trails: unknown field; did you mean 'trials'?"),
        (
            {"base": {"dataset": "iris", "modle": {}}},
            "base.modle: unknown field; did you mean 'model'?",
        ),
    ],
)
def test_a_misspelt_sweep_field_gets_the_nearest_name(change: dict[str, Any], said: str) -> None:
    data = {"base": {"dataset": "iris"}, "space": {"optimizer.lr": {"uniform": [0.1, 0.2]}}}
    with pytest.raises(InvalidSpec) as info:
        parse_sweep({**data, **change})
    assert said in str(info.value)


@pytest.mark.parametrize("asked", [None, "curves", "all"])
def test_a_trial_logs_the_per_epoch_metrics_its_sweep_asks_for(asked: str | None) -> None:
    """``trial_metrics`` (default ``curves``) reaches each trial; under ``curves`` the metrics
    a trial is judged by are kept beside the curves."""
    over = {} if asked is None else {"trial_metrics": asked}
    base = {**BASE, "optimizer": {"schedule": {"kind": "plateau", "monitor": "val_macro_f1"}}}
    s = parse_sweep(sweep(base=base, objective={"metric": "train_macro_recall"}, **over))
    spec = trial_spec(s, sweep_id="sw", number=0, params={"optimizer.lr": 0.1},
                      parent_run_id=None)  # fmt: skip
    assert spec.trial is not None and spec.trial.epoch_metrics == (asked or "curves")
    tracked = tracked_epoch_metrics(spec)
    if asked == "all":
        assert tracked is None
        return
    assert tracked is not None
    assert {"lr", "train_loss", "val_loss", "train_accuracy", "val_accuracy"} <= tracked
    assert {"train_macro_recall", "val_macro_f1"} <= tracked  # the objective, plateau's monitor
    assert not {"layer1_dead_fraction", "epoch_seconds", "val_macro_precision"} & tracked
    assert tracked_epoch_metrics(spec.model_copy(update={"trial": None})) is None  # a plain job
