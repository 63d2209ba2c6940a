"""Sizes the training code and the memory estimate share: how many rows a data set has and
how they split, how many rows an evaluation chunk or the per-epoch training evaluation holds,
how many coordinates the finite differences perturb at once.

Plain arithmetic, importing neither torch nor numpy: ``core.memory`` builds on it, and the API
runs ``core.memory.estimate`` on every submit without loading the training stack.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_SAMPLES = 500  # rows of a synthetic data set whose spec gives no n_samples
TRAIN_EVAL_ROWS = 10_000  # training-loss rows evaluated per epoch (a fixed subset beyond this)
FD_CHUNK = 128  # coordinates of one tensor whose ± copies are evaluated in one batched pass
# the most bytes an evaluation chunk's widest layer of activations may take (rows_per_chunk)
EVAL_CHUNK_BYTES = 16 * 2**20


def part_size(n: int, fraction: float) -> int:
    """Rows of a part that is ``fraction`` of ``n``: rounded, at least 1 unless the fraction is 0.
    With n >= 10 and the two fractions summing to < 0.9, at least one training row remains."""
    return 0 if fraction == 0.0 else max(1, round(n * fraction))


def part_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Rows of the train, validation and test parts of ``n`` rows (as ``load_dataset`` splits)."""
    n_test, n_val = part_size(n, test_fraction), part_size(n, val_fraction)
    return n - n_test - n_val, n_val, n_test


def rows_per_chunk(widths: Sequence[int], itemsize: int, budget: int = EVAL_CHUNK_BYTES) -> int:
    """Rows an evaluation chunk holds: its widest layer of activations (a hidden or the
    output layer of an MLP whose widths, input first, are ``widths``) takes at most
    ``budget`` bytes of ``itemsize``-byte numbers; at least one row."""
    return max(1, budget // (max(widths[1:]) * itemsize))
