"""The admission estimate of a job's memory (core.memory) and its limit (core.spec)."""

from __future__ import annotations

from typing import Any

import pytest

from core import memory
from core.data import load_dataset
from core.memory import FILE_FEATURES, FILE_ROWS, GiB, MiB, estimate, size
from core.spec import DatasetSpec, InvalidSpec, SpecLimits, parse_spec


def _estimate(data: dict[str, Any]) -> memory.MemoryEstimate:
    return estimate(parse_spec(data))


def _grows(small: dict[str, Any], large: dict[str, Any], part: str, field: str) -> None:
    """``part`` grows from ``small`` to ``large``, is the largest part of ``large``'s peak and
    is blamed on ``field``; every estimate's parts add up to its total."""
    a, b = _estimate(small), _estimate(large)
    assert b.parts[part] > a.parts.get(part, 0)
    assert b.total > a.total
    assert b.field == field
    assert max((p for p in b.parts if p not in memory.FIXED), key=b.parts.__getitem__) == part
    for e in (a, b):
        assert sum(e.parts.values()) == e.total


def test_the_data_set_grows_with_its_rows_and_features() -> None:
    blobs = {"name": "blobs", "n_samples": 100_000, "n_features": 100}
    _grows({"dataset": blobs}, {"dataset": {**blobs, "n_samples": 200_000}}, "data",
           "dataset.n_samples")  # fmt: skip
    wide = {"name": "blobs", "n_samples": 20_000, "n_features": 2_000}
    _grows({"dataset": {**wide, "n_features": 200}}, {"dataset": wide}, "data",
           "dataset.n_features")  # fmt: skip
    e = _estimate({"dataset": {**blobs, "n_samples": 200_000}})
    # float64 features and targets, in the worker's cache and in the job's own copy
    assert e.parts["data"] >= 2 * 200_000 * (100 + 1) * 8
    assert "200,000 rows × 100 features" in e.what


def test_one_hot_targets_grow_with_the_classes() -> None:
    blobs = {"name": "blobs", "n_samples": 100_000, "n_classes": 50}
    _grows({"dataset": blobs}, {"dataset": {**blobs, "n_classes": 500}}, "tensors",
           "dataset.n_classes")  # fmt: skip


def test_activations_grow_with_the_batch() -> None:
    job = {"dataset": {"name": "moons", "n_samples": 200_000}, "model": {"hidden": [1024]}}
    _grows({**job, "optimizer": {"batch_size": 4096}},
           {**job, "optimizer": {"batch_size": 65_536}}, "activations",
           "optimizer.batch_size")  # fmt: skip
    e = _estimate({**job, "optimizer": {"batch_size": 65_536}})
    # the manual engine's buffers of the batch (65,536 rows) and of the epoch's last
    # (120,000 − 65,536 rows): Z and Δ of the hidden layer, at least, in float32
    assert e.parts["activations"] >= 120_000 * 2 * 1024 * 4


def test_parameters_grow_with_the_layers() -> None:
    job = {"dataset": "digits", "gradcheck": {"fd_samples": 0}}
    _grows({**job, "model": {"hidden": [1024, 1024]}},
           {**job, "model": {"hidden": [2048, 2048]}}, "parameters", "model.hidden")  # fmt: skip
    e = _estimate({**job, "model": {"hidden": [2048, 2048]}})
    n = 64 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 10 + 10
    assert f"{n:,} parameters" in e.what
    assert e.parts["parameters"] >= 5 * n * 4  # θ, ∇θ, momentum, decay mask, epoch start


def test_finite_differences_grow_with_fd_samples() -> None:
    job = {"dataset": "digits", "model": {"hidden": [1024, 1024]}}
    _grows({**job, "gradcheck": {"fd_samples": 8}}, {**job, "gradcheck": {"fd_samples": 64}},
           "gradcheck", "gradcheck.fd_samples")  # fmt: skip
    e = _estimate({**job, "gradcheck": {"fd_samples": 64}})
    assert e.phase == "check"
    # 2 × 64 perturbed copies of the network from the first layer up, each its 32 rows'
    # float64 activations of a 1024-wide layer (the tensor itself is not copied)
    assert e.parts["gradcheck"] >= 128 * 32 * 1024 * 8
    assert "128 perturbed copies of the layers from W1 up on 32 rows" in e.what
    never = _estimate({**job, "gradcheck": {"fd_samples": 64, "at_start": False,
                                            "every_steps": 0}})  # fmt: skip
    assert never.parts.get("gradcheck", 0) == 0 and never.total < e.total


def test_the_checked_batch_grows_with_max_batch() -> None:
    job = {"dataset": "digits", "model": {"hidden": [2048]}, "optimizer": {"batch_size": 1024}}
    _grows({**job, "gradcheck": {"fd_samples": 0, "max_batch": 32}},
           {**job, "gradcheck": {"fd_samples": 0, "max_batch": 1024}}, "gradcheck",
           "gradcheck.max_batch")  # fmt: skip


def test_evaluation_is_bounded_by_its_chunks() -> None:
    """A million rows through a 4096-wide layer: evaluated in chunks, the job needs far less
    than the 16 GB of one pass over its training rows (600,000 × 4096 float32 numbers, Z
    and φ(Z)): four chunks' arrays of 16 MiB and 12 bytes a row."""
    job = {"model": {"hidden": [4096]}, "optimizer": {"batch_size": 1024}}
    big = _estimate({**job, "dataset": {"name": "moons", "n_samples": 1_000_000}})
    assert big.total < 1 * GiB and big.phase == "evaluation"
    assert big.parts["evaluation"] < 4 * 16 * MiB + 600_000 * 12 + 200_000 * 50
    assert big.field == "model.hidden" and "chunks of 1,024 rows × 4,096 units" in big.what


def test_file_data_sets_assume_the_largest_upload() -> None:
    e = _estimate({"dataset": {"name": "upload", "id": "d1", "target": "y"}})
    # read for the job alone (a worker caches no file), float64 features and targets
    assert e.parts["data"] == FILE_ROWS * (FILE_FEATURES + 1) * 8
    assert e.field == "dataset.id" and f"{FILE_ROWS:,} rows × {FILE_FEATURES} features" in e.what


def test_size_is_read_in_mib_or_gib() -> None:
    assert (size(4 * GiB), size(19.6 * GiB), size(312 * MiB), size(1)) == (
        "4 GiB", "19.6 GiB", "312 MiB", "1 MiB")  # fmt: skip


def test_a_job_over_the_memory_limit_is_refused_naming_its_field() -> None:
    job = {"dataset": {"name": "moons", "n_samples": 200_000}, "model": {"hidden": [1024]},
           "optimizer": {"batch_size": 65_536}}  # fmt: skip
    needs = _estimate(job).total
    with pytest.raises(InvalidSpec) as info:
        parse_spec(job, limits=SpecLimits(max_job_memory=needs - 1))
    (error,) = info.value.errors
    assert error.field == "optimizer.batch_size"
    assert error.message.startswith(f"this job needs about {size(needs)} of memory (activations")
    assert error.message.endswith(f"the limit is {size(needs - 1)} (GRADQ_MAX_JOB_MEMORY)")
    assert parse_spec(job, limits=SpecLimits(max_job_memory=needs)).optimizer.batch_size == 65_536
    assert parse_spec(job).optimizer.batch_size == 65_536  # core alone sets no memory limit


@pytest.mark.parametrize("name", sorted(memory.BUILTIN_ROWS))
def test_the_rows_of_each_bundled_data_set(name: str) -> None:
    data = load_dataset(DatasetSpec(name=name), seed=0)
    assert len(data.X_train) + len(data.X_val) + len(data.X_test) == memory.BUILTIN_ROWS[name]


BASE = {"dataset": {"name": "blobs", "n_samples": 20_000, "n_features": 40},
        "model": {"hidden": [64, 32]}, "optimizer": {"batch_size": 64, "epochs": 3},
        "regularization": {"dropout": 0.1}, "gradcheck": {"every_steps": 300}}  # fmt: skip
# fields the estimate does not read, or reads only as on/off
UNREAD = [{"optimizer": {"lr": 0.5}}, {"optimizer": {"momentum": 0.0, "nesterov": False}},
          {"model": {"activation": "tanh", "init": "xavier", "hidden": [64, 32]}},
          {"regularization": {"dropout": 0.4}}, {"regularization": {"weight_decay": 0.05}},
          {"gradcheck": {"every_steps": 300, "tolerance": 1e-6}},
          {"seed": 7}, {"priority": 5}, {"name": "other"}]  # fmt: skip
# (a spec, the same with one field the estimate reads changed), as edits of BASE
READ = [({}, {"dataset": {**BASE["dataset"], "n_samples": 30_000}}),
        ({}, {"dataset": {**BASE["dataset"], "n_features": 80}}),
        ({}, {"dataset": {**BASE["dataset"], "n_classes": 5}}),
        ({}, {"dataset": {**BASE["dataset"], "validation_fraction": 0.4}}),
        ({}, {"dataset": {**BASE["dataset"], "test_fraction": 0.5}}),
        ({}, {"dataset": {"name": "moons", "n_features": None}}),
        ({}, {"model": {"hidden": [64]}}), ({}, {"model": {"hidden": [64, 32, 8]}}),
        ({}, {"optimizer": {"batch_size": 4096, "epochs": 3}}),
        ({}, {"optimizer": {"batch_size": 64, "epochs": 1}}),
        ({}, {"optimizer": {"name": "adam"}}), ({}, {"optimizer": {"name": "rmsprop"}}),
        ({}, {"model": {"hidden": [64, 32], "activation": "gelu"}}),
        ({}, {"regularization": {"dropout": 0.0}}),
        ({}, {"regularization": {"dropout": 0.1, "weight_decay": 0.0}}),
        ({"gradcheck": {"every_steps": 0}}, {"gradcheck": {"every_steps": 0, "at_start": False}}),
        ({}, {"gradcheck": {"every_steps": 0}}),
        ({}, {"gradcheck": {"every_steps": 300, "fd_samples": 4096}}),
        ({}, {"gradcheck": {"every_steps": 300, "max_batch": 4096}}),
        ({}, {"engine": "autograd"}),
        (moons := {"dataset": {"name": "moons", "n_features": None}}, {**moons, "loss": "logistic"}),
        ({}, {"regularization": {"dropout": 0.1, "early_stopping": {"restore_best": False}}}),
        ({}, {"regularization": {"dropout": 0.1, "early_stopping": {"enabled": False}}})]  # fmt: skip


def _with(edit: dict[str, Any], base: dict[str, Any] = BASE) -> dict[str, Any]:
    """``base`` with ``edit``'s values, section by section."""
    out = dict(base)
    for key, value in edit.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _with(value, base[key]) if both else value
    return out


def _figures(edit: dict[str, Any]) -> tuple[Any, ...]:
    """Everything the estimate computes for a spec: each phase's parts, and the peak."""
    spec = parse_spec(_with(edit))
    return memory._phases(spec, memory._shape(spec)), memory.compute(spec)


def test_specs_that_differ_only_in_fields_the_estimate_does_not_read_share_one() -> None:
    memory._CACHE.clear()
    base = _estimate(BASE)
    for edit in UNREAD:
        assert _figures(edit) == _figures({}), edit  # the field does not change the figures
        assert estimate(parse_spec(_with(edit))) is base, edit  # the cache answers it


def test_every_field_the_estimate_reads_is_in_its_key() -> None:
    """Each field whose change changes the figures changes the key; and each spec, asked
    after all the others were cached, gets its own estimate."""
    memory._CACHE.clear()
    asked = []
    for reference, changed in READ:
        assert _figures(changed) != _figures(reference), changed
        one, other = parse_spec(_with(reference)), parse_spec(_with(changed))
        assert memory.estimate_key(one) != memory.estimate_key(other), changed
        asked += [one, other]
    for spec in asked * 2:
        assert estimate(spec) == memory.compute(spec)


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "CACHE_SIZE", 3)
    memory._CACHE.clear()
    for n in range(10):
        _estimate({**BASE, "optimizer": {"batch_size": 10 + n}})
        assert len(memory._CACHE) <= 3


def test_the_cache_keeps_apart_uploads_of_one_spec_and_different_shapes() -> None:
    from core.spec import DatasetShape

    memory._CACHE.clear()
    spec = parse_spec({"dataset": {"name": "upload", "id": "d1", "target": "y"}})
    narrow = DatasetShape("classification", 4, 3, n_rows=1_000)
    wide = DatasetShape("classification", 400, 3, n_rows=100_000)
    assert estimate(spec, narrow) == memory.compute(spec, narrow)
    assert estimate(spec, wide) == memory.compute(spec, wide) != memory.compute(spec, narrow)


def test_a_pack_counts_its_shared_data_once_and_each_members_own_parts() -> None:
    """A pack of one is the job's estimate; each member added costs its own parts (its
    parameters, activations, …) and not the data set again: a pack of large data and small
    models costs far less than its members alone, and grows by the same amount per member."""
    data = {"name": "blobs", "n_samples": 200_000, "n_features": 50}
    specs = [
        parse_spec({"dataset": data, "model": {"hidden": [64, 64]}, "seed": k}) for k in range(8)
    ]
    one = estimate(specs[0]).total
    assert memory.pack_estimate(specs[:1]) == one
    sizes = [memory.pack_estimate(specs[:k]) for k in (2, 4, 8)]
    step = sizes[1] - sizes[0]
    assert step > 0 and sizes[2] - sizes[1] == 2 * step  # linear in the members
    assert one < sizes[0] < 2 * one
    assert sizes[2] < 2 * one < 8 * one  # the data set (most of one job) is counted once
    shared = sum(estimate(specs[0]).parts[p] for p in memory.PACK_SHARED)
    assert sizes[0] - one < one - shared + 1


def test_adams_two_moments_and_its_step_buffer_count_in_the_parameters() -> None:
    job = {"dataset": "digits", "model": {"hidden": [2048, 2048]}, "gradcheck": {"fd_samples": 0}}
    n = 64 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 10 + 10
    sgd = _estimate(job).parts["parameters"]
    adam = _estimate({**job, "optimizer": {"name": "adam"}}).parts["parameters"]
    rmsprop = _estimate({**job, "optimizer": {"name": "rmsprop"}}).parts["parameters"]
    assert adam - sgd >= 2 * n * 4 and sgd < rmsprop < adam


def test_the_estimate_knows_which_activations_run_in_place() -> None:
    from core.activations import ACTIVATIONS, inplace

    assert {name for name in ACTIVATIONS if inplace(name)} == memory.INPLACE_ACTIVATIONS
