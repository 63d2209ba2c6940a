"""The keys of a job's metrics in MLflow, and the names they had before.

gradq's own metric names are flat (``EpochRecord.metrics()``: ``train_loss``, ``val_accuracy``,
``lr``, ``layer1_dead_fraction``, …; the job's progress and result use them). In MLflow a
run's metrics are keyed ``<section>/<name>``: MLflow's run page groups the charts of its
"Model metrics" tab into one section per prefix before the last ``/``, sorts the sections by
name and shows the metrics without a prefix last, in a section of their own. So a run opens on
its curves:

- ``accuracy/train``, ``accuracy/val``, ``loss/train``, ``loss/val`` (``r2/…``, ``rmse/…`` for
  regression): the learning curves, per metric one section with both splits;
- ``timing/epoch_seconds``, ``timing/samples_per_s``; ``training/lr``, ``training/grad_norm``,
  ``training/clipped_steps`` (with ``optimizer.clip_norm``), ``training/gradcheck_max_rel_error``,
  ``training/gradcheck_max_fd_rel_error``;
  ``weights/layer<i>_<diagnostic>`` (dead_fraction, update_ratio, weight_norm);
- the single values unprefixed, last: ``final_<name>``, ``final_epochs``, ``final_steps``,
  ``gradcheck_count``.

Runs tracked before these keys carry the flat names: readers ask for both (:func:`aliases`).
"""

from __future__ import annotations

SPLITS = ("train", "val")
_SECTIONS = {
    "lr": "training",
    "grad_norm": "training",
    "clipped_steps": "training",
    "gradcheck_max_rel_error": "training",
    "gradcheck_max_fd_rel_error": "training",
    "epoch_seconds": "timing",
    "samples_per_s": "timing",
}
_PREFIXED = frozenset(_SECTIONS.values()) | {"weights"}


def mlflow_key(name: str) -> str:
    """The MLflow key of a flat gradq metric name (``train_loss`` → ``loss/train``); a name
    that is already a key, or that stays unprefixed (``final_test_accuracy``), as it is."""
    if "/" in name:
        return name
    if name in _SECTIONS:
        return f"{_SECTIONS[name]}/{name}"
    split, _, metric = name.partition("_")
    if split in SPLITS and metric:
        return f"{metric}/{split}"
    if name.startswith("layer") and name[5:].partition("_")[0].isdigit():
        return f"weights/{name}"
    return name


def legacy_key(key: str) -> str:
    """The flat name a key had before (``loss/train`` → ``train_loss``); the inverse of
    :func:`mlflow_key` on the keys it makes."""
    section, _, leaf = key.rpartition("/")
    if not section:
        return key
    if leaf in SPLITS:
        return f"{leaf}_{section}"
    return leaf if section in _PREFIXED else key


def aliases(name: str) -> tuple[str, ...]:
    """Every key that a metric asked for as ``name`` (new or old) may be logged under in a
    run: its MLflow key first, then its former flat name when that differs."""
    key = mlflow_key(name)
    old = legacy_key(key)
    return (key,) if old == key else (key, old)


def mlflow_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` (flat names) keyed for MLflow."""
    return {mlflow_key(k): v for k, v in metrics.items()}
