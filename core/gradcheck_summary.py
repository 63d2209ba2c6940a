"""One line for a run's gradient checks, as ``gradq train`` prints it and a job's result
keeps it (``result.gradchecks``, shown by ``gradq show`` and ``gradq logs``). No torch."""

from __future__ import annotations

from typing import Any


def checks_summary(reports: list[dict[str, Any]]) -> str | None:
    """One line for a run's passing gradient checks: how many, and the worst errors."""
    if not reports:
        return None
    passed = [r for r in reports if r.get("passed")]
    worst = max((r.get("max_rel_error", 0.0) for r in passed), default=0.0)
    worst_fd = max((r.get("max_fd_rel_error", 0.0) for r in passed), default=0.0)
    return (
        f"gradient checks: {len(passed)} of {len(reports)} passed (worst relative error: "
        f"manual vs autograd {worst:.1e}, vs finite differences {worst_fd:.1e})"
    )
