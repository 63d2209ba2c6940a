"""Tags, ``init_from`` and JSON merge patches of a spec; a warm start's weights in training."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from core.checkpoint import CheckpointError
from core.packed import unpackable_reason
from core.spec import InvalidSpec, merge_patch, parse_spec
from core.train import train


@pytest.mark.parametrize(
    ("target", "patch", "merged"),
    [  # RFC 7396's own examples, appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, merged: Any) -> None:
    assert merge_patch(target, patch) == merged


def test_merge_patch_leaves_its_target_as_it_was() -> None:
    target = {"optimizer": {"epochs": 3, "lr": 0.1}}
    assert merge_patch(target, {"optimizer": {"epochs": 9}}) == {
        "optimizer": {"epochs": 9, "lr": 0.1}
    }
    assert target == {"optimizer": {"epochs": 3, "lr": 0.1}}


@pytest.mark.parametrize(
    ("tags", "field", "words"),
    [
        ({"bad key": "x"}, "tags", "tag key 'bad key'"),
        ({"-team": "x"}, "tags", "starting with a letter or digit"),
        ({"k" * 65: "x"}, "tags", "1-64"),
        ({"team": ""}, "tags", "its value is 1-100"),
        ({"team": "a b"}, "tags", "its value is 1-100"),
        ({f"k{i}": "v" for i in range(21)}, "tags", "at most 20 tags, got 21"),
        ({"team": 3}, "tags.team", "string"),
    ],
)
def test_bad_tags_are_refused_naming_the_field(tags: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec({"dataset": "iris", "tags": tags})
    [error] = caught.value.errors
    assert error.field == field and words in error.message


def test_good_tags_and_init_from_are_kept() -> None:
    tags = {"team": "vision", "data.v": "2026-12:01/a@b+c=d"}
    spec = parse_spec({"dataset": "iris", "tags": tags, "init_from": {"job": "j1"}})
    assert spec.tags == tags
    assert spec.init_from is not None and spec.init_from.checkpoint == "last"
    assert unpackable_reason(spec) == "init_from: a warm start trains alone"
    with pytest.raises(InvalidSpec) as caught:
        parse_spec({"dataset": "iris", "init_from": {"job": "j1", "checkpoint": "first"}})
    assert caught.value.errors[0].field == "init_from.checkpoint"


SPEC = {"dataset": "iris", "model": {"hidden": [4]}, "optimizer": {"epochs": 1, "lr": 1e-9}}


def test_training_starts_from_the_weights_given() -> None:
    spec = parse_spec(SPEC)
    cold = train(spec, dtype=torch.float64)
    shapes = [p.shape for p in cold.model.parameters()]
    weights = [torch.full(s, 0.1 * (i + 1), dtype=torch.float64) for i, s in enumerate(shapes)]
    warm = train(spec, init_weights=weights, dtype=torch.float64)
    assert warm.steps == cold.steps  # one epoch from step 0
    for ours, given in zip(warm.model.parameters(), weights, strict=True):
        assert torch.allclose(ours.detach(), given, atol=1e-6)  # a rate of 1e-9 moved nothing
    wrong = [torch.zeros(s[0] + 1, *s[1:]) for s in shapes]
    with pytest.raises(CheckpointError, match=r"init_from: the weights have shapes"):
        train(spec, init_weights=wrong)
