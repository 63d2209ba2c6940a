"""The reference job of gradq's benchmarks, in one place: digits, hidden [64, 64], relu,
minibatch SGD (batch 32, lr 0.05, momentum 0.9), weight decay 1e-4, no early stopping.

``bench/engine.py``, ``bench/service.py`` and ``bench/gpu_job.py`` time it; each adds what
its own run needs (a name, an experiment, the engine, the device, the resources).
"""

from __future__ import annotations

from typing import Any

DATASET = "digits"
HIDDEN = [64, 64]
LR, MOMENTUM, WD, BATCH = 0.05, 0.9, 1e-4, 32


def reference_job(epochs: int, **extra: Any) -> dict[str, Any]:
    """The reference job's spec (a raw dict for ``parse_spec``) for ``epochs``, with
    ``extra`` top-level fields."""
    return {
        "dataset": DATASET,
        "model": {"hidden": list(HIDDEN), "activation": "relu"},
        "optimizer": {"lr": LR, "momentum": MOMENTUM, "batch_size": BATCH, "epochs": epochs},
        "regularization": {"weight_decay": WD, "early_stopping": {"enabled": False}},
        **extra,
    }
