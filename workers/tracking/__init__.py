"""gradq's MLflow tracking: the only code that talks to MLflow.

- ``run``: ``JobTracker``, one attempt's writer into its job's run, and the run's end
  (``close_run``) and resume point (``latest_checkpoint``);
- ``buffer``, ``artifacts``, ``clock``, ``plot``: what the tracker sends, how, and at what
  cost; the learning-curve PNG;
- ``client``: the MLflow client, experiments, metric history and run links;
- ``scope``: experiment and registered model names scoped by tenant (API keys on);
- ``read``: the read interface of ``api/`` (``Tracking``).

The names below are importable from ``workers.tracking``; each is loaded on first use, so
that importing the read interface costs neither MLflow nor torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as re-exports, for type checkers
    from workers.tracking.client import make_client as make_client
    from workers.tracking.client import metric_history as metric_history
    from workers.tracking.client import run_page as run_page
    from workers.tracking.client import run_url as run_url
    from workers.tracking.read import Tracking as Tracking
    from workers.tracking.read import TrackingUnavailable as TrackingUnavailable
    from workers.tracking.run import JobTracker as JobTracker
    from workers.tracking.run import close_run as close_run
    from workers.tracking.run import latest_checkpoint as latest_checkpoint

_HOMES = {
    "make_client": "client",
    "metric_history": "client",
    "run_page": "client",
    "run_url": "client",
    "Tracking": "read",
    "TrackingUnavailable": "read",
    "JobTracker": "run",
    "close_run": "run",
    "latest_checkpoint": "run",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{home}"), name)
