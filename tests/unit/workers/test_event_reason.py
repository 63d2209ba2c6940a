"""``workers.task.event_reason``: what a job's final event says (``gradq logs`` shows it)."""

from __future__ import annotations

import threading
import warnings

import pytest

from workers.task import EVENT_REASON_CHARS, event_reason, recorded_warnings


def test_a_failure_says_its_kind_and_message_within_the_limit() -> None:
    error = {"type": "diverged", "message": "loss became nan at epoch 4"}
    assert event_reason(error, None, None) == "diverged: loss became nan at epoch 4"
    long = {"type": "invalid", "message": "x" * 2000}
    assert len(event_reason(long, None, None) or "") == EVENT_REASON_CHARS


def test_a_result_says_how_it_ended_and_its_checks() -> None:
    result = {"stopped": "early_stopped", "epochs": 14, "best_epoch": 4,
              "gradchecks": "gradient checks: 2 of 2 passed (…)"}  # fmt: skip
    assert event_reason(None, result, None) == (
        "early_stopped after 14 epochs, best epoch 4; gradient checks: 2 of 2 passed (…)"
    )
    bare = {"stopped": "completed", "epochs": 3, "best_epoch": None, "gradchecks": None}
    assert event_reason(None, bare, None) == "completed after 3 epochs"
    assert event_reason(None, None, "cancelled at step 7") == "cancelled at step 7"


def test_an_attempts_warnings_are_recorded_once_each_and_named() -> None:
    seen: list[str] = []
    with pytest.raises(RuntimeError), recorded_warnings(seen):
        for _ in range(3):
            warnings.warn("lr is large", UserWarning, stacklevel=1)
        warnings.warn("old", DeprecationWarning, stacklevel=1)
        raise RuntimeError("a failed training keeps what it warned of")
    assert seen == ["UserWarning: lr is large", "DeprecationWarning: old"]
    error = {"type": "diverged", "message": "loss became nan", "warnings": seen}
    assert event_reason(error, None, None) == (
        "diverged: loss became nan; warnings: UserWarning: lr is large | DeprecationWarning: old"
    )
    result = {"stopped": "completed", "epochs": 3, "warnings": ["UserWarning: x"] * 100}
    assert len(event_reason(None, result, None) or "") == EVENT_REASON_CHARS


def test_only_the_calling_thread_s_warnings_are_recorded() -> None:
    """A pack's member ends on another thread while the pack trains: what that thread warns
    of is not the training's."""
    seen: list[str] = []
    with recorded_warnings(seen):
        other = threading.Thread(
            target=lambda: warnings.warn("from the ending thread", UserWarning, stacklevel=1)
        )
        other.start()
        other.join()
        warnings.warn("from the training", UserWarning, stacklevel=1)
    assert seen == ["UserWarning: from the training"]
