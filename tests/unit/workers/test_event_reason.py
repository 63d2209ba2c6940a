"""``workers.task.event_reason``: what a job's final event says (``gradq logs`` shows it)."""

from __future__ import annotations

from workers.task import EVENT_REASON_CHARS, event_reason


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
