"""A worker process's own settings: the collector frozen once its imports are done."""

from __future__ import annotations

import pytest


def test_a_worker_process_freezes_its_imports_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first call collects and freezes what is alive; later attempts do not pay again."""
    import gc

    import workers.task as task

    monkeypatch.setattr(task, "_frozen", False)
    kept = [[n] for n in range(1_000)]
    before = gc.get_freeze_count()
    task.freeze_imports()
    assert gc.get_freeze_count() >= before + len(kept)
    calls: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(1) or 0)
    task.freeze_imports()
    assert calls == []
