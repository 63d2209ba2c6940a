"""A pack's training against its members trained one at a time, evaluation included.

    .venv/bin/python bench/pack_train.py [--members 16] [--epochs 20] [--rounds 2]

``bench/engine.py`` times the steps alone; a sweep's trial also evaluates both splits every
epoch and ends with its final metrics. Here K digits [64, 64] trials (batch 32, SGD momentum
0.9, 20 epochs, early stopping and gradient checks off, each its own seed and learning rate)
train through ``core.train.train`` one after the other (the anchor) and through
``core.packed.train_packed`` as one pack, in the same process on one thread, interleaved
``--rounds`` times after a warm-up; process CPU time. With ``--profile`` the last pack's
time is also split by cProfile into the per-epoch evaluation, the steps and the rest.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from core.data import load_dataset
from core.packed import train_packed
from core.spec import JobSpec, parse_spec
from core.train import train


def spec(k: int, epochs: int) -> JobSpec:
    return parse_spec({
        "dataset": {"name": "digits", "seed": 0}, "model": {"hidden": [64, 64]},
        "optimizer": {"epochs": epochs, "batch_size": 32, "lr": 0.01 * (1 + k % 5)},
        "regularization": {"early_stopping": {"enabled": False}},
        "gradcheck": {"at_start": False, "every_steps": 0}, "seed": k,
        "trial": {"sweep_id": "bench", "number": k, "metric": "val_accuracy", "mode": "max",
                  "pack": True},
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    specs = [spec(k, args.epochs) for k in range(args.members)]
    data = load_dataset(specs[0].dataset, seed=0)
    train(specs[0], data=data)  # warm-up
    train_packed(specs[:2], data=data)
    print(f"{args.members} digits [64, 64] trials × {args.epochs} epochs, one thread, "
          "process CPU ms a trial\n")  # fmt: skip
    print("| round | one at a time (anchor) | one pack | × anchor |")
    print("|---:|---:|---:|---:|")
    for r in range(1, args.rounds + 1):
        c = time.process_time()
        for s in specs:
            train(s, data=data)
        solo = (time.process_time() - c) / len(specs)
        c = time.process_time()
        train_packed(specs, data=data)
        packed = (time.process_time() - c) / len(specs)
        print(f"| {r} | {1000 * solo:.0f} | {1000 * packed:.0f} | {solo / packed:.2f}× |")
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        train_packed(specs, data=data)
        profile.disable()
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        cumulative = {f"{fn[0]}:{fn[2]}": v[3] for fn, v in stats.items()}

        def share(suffix: str) -> float:
            return sum(t for name, t in cumulative.items() if name.endswith(suffix))

        whole = share("packed.py:train_packed")
        evaluation, steps = share("packed.py:evaluate"), share("packed.py:step")
        print(f"\none pack under cProfile: {whole:.3f} s; per-epoch evaluation "
              f"{evaluation / whole:.0%}, steps {steps / whole:.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
