"""Sweep benchmark: one 32-trial random search, side by side through gradq (its trials each
alone and in packs) and Ray Tune; a 128-trial one through gradq; where a packed trial's time
goes.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python bench/sweep.py
    .venv/bin/python bench/sweep.py --only tune,loop --json
    .venv/bin/python bench/sweep.py --only sweep --only sweep-asha --trials 32
    .venv/bin/python bench/sweep.py --only sweep,sweep-packed,sweep-big,sweep-big-packed
    .venv/bin/python bench/sweep.py --only profile --profile-unpacked
    .venv/bin/python bench/sweep.py --quick        # every row, a few trials of 2 epochs

The search: digits, hidden [64, 64], relu, batch 32, 20 epochs, SGD momentum 0.9, every
job-level early stopping off (only ASHA stops a trial), one CPU a trial; ``optimizer.lr``
log-uniform in [0.001, 0.3] (from ~0.15 up many trials collapse to chance accuracy: ASHA has
something to prune) and ``regularization.weight_decay`` log-uniform in [1e-6, 1e-2]. Runs:

* ``sweep`` / ``sweep-asha``: a gradq sweep (``POST /v1/sweeps``, method random, ASHA off and
  on, ``search.pack: false``: each trial its own Ray task) against ``gradq serve``, ``parallel``
  32 (``--parallel``). The sweep draws its own 32 points with its own seed (``--sweep-seed``)
  from the same ranges.
* ``sweep-packed``: the same sweep with ``search.pack: true``: its queued trials train in packs
  (``workers.pack``), each trial still a job of its own.
* ``sweep-big`` / ``sweep-big-packed``: the same sweep of 128 trials (``--big-trials``),
  ``parallel`` 32 (``--big-parallel``), each alone and packed; on the same service.
* ``profile``: the in-process profile (:func:`pack_profile`): one packed sweep of 32 trials
  (``--profile-trials``; ``--profile-unpacked``: the same unpacked too) driven in this process
  without Ray, each phase of a trial timed (:data:`PHASES`); printed in milliseconds a trial.
* ``tune`` / ``tune-asha``: ``ray.tune.Tuner`` without and with ``ASHAScheduler`` (the same
  rungs: grace period 2 epochs, reduction factor 3) on a local Ray of ``--cpus`` CPUs; each
  trial runs gradq's own ``core.train.train`` on the trial's spec and reports
  ``val_accuracy`` every epoch (:class:`EpochReporter`). Its ``ray.init`` is timed apart.
* ``loop``: ``core.train.train`` on each trial's spec in turn, in this process.
* ``jobs``: the same 32 specs submitted as plain gradq jobs (``POST /v1/jobs``) to the same
  ``gradq serve``.

Ray Tune, the loop and the plain jobs train the same 32 (lr, weight decay) pairs, drawn once
from a seeded numpy generator (``--seed``). The service (``gradq serve`` on SQLite and MLflow's
SQLite store in a temporary folder, a local Ray of ``--cpus`` CPUs, 127.0.0.1 only) is started
before its runs and warmed with one one-epoch job per CPU (``--no-warm``: not).

Per run: wall seconds from the first trial's submission to the last trial's end (the service's
own ``finished_at``: a sweep's, else its last job's; Ray Tune: ``Tuner(...)`` to ``fit()``
returning), trials per second, the epochs trained in all, and the best validation accuracy: the
highest per-epoch ``val_accuracy`` of any trial, read the same way for every run (gradq: each
job's ``accuracy/val`` curve). Ratios are against Ray Tune with the same scheduler (the anchor).
Targets (issue 17): a gradq sweep without ASHA at least 15× Ray Tune's trials/s; with ASHA at
least 2× fewer epochs than without, its best accuracy within 1 point. Issue 18, for each packed
row: at least 3× the trials/s of the same sweep unpacked, ~50× Ray Tune's (the 32-trial Ray
Tune row whatever the row's trials: trials/s is a rate), its best accuracy within 1 point of
the unpacked sweep's. ``--quick``: 4 trials (8 for the big sweeps, parallel 4) of 2 epochs.

Nothing is left behind: Ray Tune's results go to a temporary folder, each local Ray's
processes are found by their temporary folder and stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The checkout's gradq (and bench.reference, the deploy tests' harness), installed or not.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for helpers in ("tests/acceptance", "tests/integration/deploy"):
    sys.path.insert(1, str(ROOT / helpers))

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bench.reference import reference_job
from core.callbacks import Callback, EpochRecord

LR_RANGE = (0.001, 0.3)
WD_RANGE = (1e-6, 1e-2)
ASHA = {"min_epochs": 2, "reduction_factor": 3}
TRIAL_NAME = "sweep-bench"
TERMINAL = ("succeeded", "failed", "cancelled", "pruned")
SWEEP_TERMINAL = ("succeeded", "failed", "cancelled")
RUNS: dict[str, tuple[str, bool]] = {  # name -> (label, ASHA), in the order printed
    "sweep": ("gradq sweep", False),
    "sweep-packed": ("gradq sweep, packed", False),
    "sweep-big": ("gradq sweep, big", False),
    "sweep-big-packed": ("gradq sweep, big, packed", False),
    "sweep-asha": ("gradq sweep + ASHA", True),
    "tune": ("Ray Tune", False),
    "tune-asha": ("Ray Tune + ASHAScheduler", True),
    "loop": ("sequential loop, one process", False),
    "jobs": ("plain gradq jobs", False),
}
SPEED_TARGET, EPOCHS_TARGET, POINTS_TARGET = 15.0, 2.0, 1.0
# the packed rows (issue 18): each against the same sweep unpacked, and against Ray Tune
PACKED_OF = {"sweep-packed": "sweep", "sweep-big-packed": "sweep-big"}
PACKED_SPEED_TARGET, PACKED_TUNE_TARGET = 3.0, 50.0
BIG = ("sweep-big", "sweep-big-packed")  # the sweeps of ``--big-trials`` trials
PROFILE = "profile"  # the in-process profile of one packed sweep (``--only profile``)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- what every runner trains ---------------------------------------------------------------


def sample_configs(n: int, seed: int) -> list[dict[str, float]]:
    """``n`` (lr, weight decay) pairs, each log-uniform in its range, from ``seed``."""
    rng = np.random.default_rng(seed)
    lr = np.exp(rng.uniform(math.log(LR_RANGE[0]), math.log(LR_RANGE[1]), n))
    wd = np.exp(rng.uniform(math.log(WD_RANGE[0]), math.log(WD_RANGE[1]), n))
    return [{"lr": float(a), "weight_decay": float(b)} for a, b in zip(lr, wd, strict=True)]


def trial_spec(
    config: dict[str, float], epochs: int = 20, name: str = TRIAL_NAME
) -> dict[str, Any]:
    """A trial's job spec (a raw dict for ``parse_spec`` or ``POST /v1/jobs``): the reference
    job (``bench/reference.py``: digits, [64, 64], batch 32, momentum 0.9, early stopping
    off) for ``epochs``, one CPU, with the trial's lr and weight decay."""
    spec = reference_job(epochs, name=name, experiment="bench-sweep", resources={"cpus": 1})
    spec["optimizer"]["lr"] = config["lr"]
    spec["regularization"]["weight_decay"] = config["weight_decay"]
    return spec


def tune_param_space(configs: list[dict[str, float]]) -> dict[str, Any]:
    """Ray Tune's ``param_space``: one trial per configuration, in their order."""
    from ray import tune

    return {"trial": tune.grid_search(configs)}


def sweep_spec(
    *, trials: int, epochs: int, seed: int, parallel: int, asha: bool, pack: bool = False
) -> dict[str, Any]:
    """The gradq sweep (``POST /v1/sweeps``): a trial's spec less lr and weight decay as the
    base, the two ranges as the space, random search; ASHA or no early stopping; its trials
    trained in packs (``search.pack``) or each alone."""
    base = trial_spec({"lr": 0.0, "weight_decay": 0.0}, epochs)
    del base["optimizer"]["lr"], base["regularization"]["weight_decay"]
    return {
        "name": f"{TRIAL_NAME}-{'asha' if asha else 'none'}{'-packed' if pack else ''}",
        "base": base,
        "space": {
            "optimizer.lr": {"loguniform": list(LR_RANGE)},
            "regularization.weight_decay": {"loguniform": list(WD_RANGE)},
        },
        "search": {
            "method": "random",
            "trials": trials,
            "parallel": parallel,
            "seed": seed,
            "max_failed": trials,
            "pack": pack,
        },
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "early_stopping": {"kind": "asha", **ASHA} if asha else {"kind": "none"},
    }


class EpochReporter(Callback):
    """Hands ``report`` each epoch's ``{"val_accuracy", "epoch"}`` (Ray Tune: ``tune.report``)."""

    def __init__(self, report: Callable[[dict[str, float]], None]) -> None:
        self.report = report

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.report({"val_accuracy": record.val["accuracy"], "epoch": record.epoch})


# --- what a run measured ------------------------------------------------------------------


@dataclass
class Trial:
    lr: float
    weight_decay: float
    epochs: int
    best: float | None  # the highest val_accuracy of its epochs
    status: str  # succeeded | pruned | failed | cancelled
    pack: int | None = None  # gradq: the members of the pack it trained in (1: alone)

    @classmethod
    def from_curve(
        cls, config: dict[str, float], curve: Sequence[float | None], status: str, epochs: int = -1
    ) -> Trial:
        """From the trial's val_accuracy per epoch; ``epochs`` when known apart (a job's
        progress), else the curve's length."""
        finite = [v for v in curve if v is not None and math.isfinite(v)]
        return cls(
            lr=config["lr"],
            weight_decay=config["weight_decay"],
            epochs=len(curve) if epochs < 0 else epochs,
            best=max(finite) if finite else None,
            status=status,
        )


@dataclass
class Run:
    name: str
    wall_s: float | None  # None: not measured (see error)
    trials: list[Trial]
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    load_before: float | None = None
    load_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return RUNS.get(self.name, (self.name, False))[0]

    @property
    def asha(self) -> bool:
        return RUNS.get(self.name, (self.name, False))[1]

    @property
    def ok(self) -> bool:
        return self.wall_s is not None and self.error is None and bool(self.trials)

    @property
    def epochs(self) -> int:
        return sum(t.epochs for t in self.trials)

    @property
    def best(self) -> float | None:
        found = [t.best for t in self.trials if t.best is not None]
        return max(found) if found else None

    @property
    def trials_per_s(self) -> float | None:
        return len(self.trials) / self.wall_s if self.wall_s else None

    @property
    def statuses(self) -> dict[str, int]:
        return dict(Counter(t.status for t in self.trials))


def anchor_of(run: Run) -> str:
    return "tune-asha" if run.asha else "tune"


def ratio_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Each run's figures and its ratios to Ray Tune with the same scheduler (the anchor):
    trials/s over the anchor's, epochs over the anchor's, best accuracy less the anchor's in
    points; None where either run has no figures."""
    by_name = {r.name: r for r in runs}
    rows = []
    for run in runs:
        anchor = by_name.get(anchor_of(run))
        usable = anchor is not None and anchor.ok and run.ok
        a: Run = anchor if usable and anchor is not None else run
        alone = by_name.get(PACKED_OF.get(run.name, ""))
        paired = alone is not None and alone.ok and run.ok
        rows.append({
            "name": run.name, "label": run.label, "asha": run.asha,
            "anchor": a.name if usable else None,
            "wall_s": run.wall_s, "trials": len(run.trials), "trials_per_s": run.trials_per_s,
            "epochs": run.epochs if run.ok else None,
            "best_val_accuracy": run.best if run.ok else None,
            "statuses": run.statuses,
            "speed_x": _ratio(run.trials_per_s, a.trials_per_s) if usable else None,
            "epochs_x": _ratio(run.epochs, a.epochs) if usable else None,
            "best_delta_points": _points(run.best, a.best) if usable else None,
            "unpacked": alone.name if paired and alone is not None else None,
            "unpacked_speed_x": (
                _ratio(run.trials_per_s, alone.trials_per_s) if paired and alone else None
            ),
            "unpacked_delta_points": _points(run.best, alone.best) if paired and alone else None,
            "packs": dict(sorted(Counter(t.pack for t in run.trials if t.pack).items())),
            "load_before": run.load_before, "load_after": run.load_after,
            "error": run.error, "notes": run.notes, **run.extra,
            "per_trial": [dataclasses.asdict(t) for t in run.trials],
        })  # fmt: skip
    return rows


def _ratio(x: float | None, y: float | None) -> float | None:
    return None if x is None or not y else x / y


def _points(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else 100 * (x - y)


def target_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """The issue's targets, judged on this bench's runs (``met`` None: a run is missing)."""
    by_name = {r.name: r for r in runs if r.ok}
    tune, off, on = by_name.get("tune"), by_name.get("sweep"), by_name.get("sweep-asha")
    speed = _ratio(off.trials_per_s, tune.trials_per_s) if off and tune else None
    fewer = _ratio(off.epochs, on.epochs) if off and on else None
    close = _points(on.best, off.best) if off and on else None
    return [
        {
            "name": "gradq sweep without ASHA: trials/s over Ray Tune's",
            "measured": speed, "needed": f"≥ {SPEED_TARGET:g}×",
            "met": None if speed is None else speed >= SPEED_TARGET,
        },
        {
            "name": "gradq sweep: epochs without ASHA over with ASHA",
            "measured": fewer, "needed": f"≥ {EPOCHS_TARGET:g}×",
            "met": None if fewer is None else fewer >= EPOCHS_TARGET,
        },
        {
            "name": "gradq sweep: best accuracy, with ASHA less without (points)",
            "measured": close, "needed": f"≥ −{POINTS_TARGET:g} (within {POINTS_TARGET:g} point)",
            "met": None if close is None else close >= -POINTS_TARGET,
        },
    ] + [row for packed in PACKED_OF for row in packed_targets(by_name, packed)]  # fmt: skip


def packed_targets(by_name: dict[str, Run], packed: str) -> list[dict[str, Any]]:
    """Issue 18's targets for one packed row: its trials/s over the same sweep unpacked and
    over Ray Tune's (the 32-trial anchor whatever the row's trials: trials/s is a rate), its
    best accuracy less the unpacked sweep's."""
    run, alone, tune = by_name.get(packed), by_name.get(PACKED_OF[packed]), by_name.get("tune")
    n = f"{len(run.trials)} trials" if run else packed
    speed = _ratio(run.trials_per_s, alone.trials_per_s) if run and alone else None
    anchor = _ratio(run.trials_per_s, tune.trials_per_s) if run and tune else None
    close = _points(run.best, alone.best) if run and alone else None
    return [
        {
            "name": f"gradq sweep packed ({n}): trials/s over the same sweep unpacked",
            "measured": speed, "needed": f"≥ {PACKED_SPEED_TARGET:g}×",
            "met": None if speed is None else speed >= PACKED_SPEED_TARGET,
        },
        {
            "name": f"gradq sweep packed ({n}): trials/s over Ray Tune's",
            "measured": anchor, "needed": f"~{PACKED_TUNE_TARGET:g}× (judged at ≥)",
            "met": None if anchor is None else anchor >= PACKED_TUNE_TARGET,
        },
        {
            "name": f"gradq sweep packed ({n}): best accuracy less unpacked (points)",
            "measured": close, "needed": f"≥ −{POINTS_TARGET:g} (within {POINTS_TARGET:g} point)",
            "met": None if close is None else abs(close) <= POINTS_TARGET,
        },
    ]  # fmt: skip


def report(
    runs: list[Run],
    *,
    configs_seed: int,
    sweep_seed: int,
    ray_init_s: float | None,
    trials: int | None = None,
    epochs: int = 20,
    cpus: int | None = None,
    profiles: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    trials = trials if trials is not None else max((len(r.trials) for r in runs), default=0)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "setup": {
            "trials": trials,
            "epochs": epochs,
            "cpus": cpus,
            "dataset": "digits",
            "hidden": [64, 64],
            "batch_size": 32,
            "momentum": 0.9,
            "lr_loguniform": list(LR_RANGE),
            "weight_decay_loguniform": list(WD_RANGE),
            "asha": dict(ASHA),
            "configs_seed": configs_seed,
            "sweep_seed": sweep_seed,
        },
        "ray_init_s": ray_init_s,
        "runs": ratio_rows(runs),
        "targets": target_rows(runs),
        "profiles": profiles or [],
    }


def print_report(rep: dict[str, Any], file: Any = None) -> None:
    """The report as Markdown tables and notes, on ``file`` (standard output)."""

    def emit(*lines: str) -> None:
        print(*lines, file=file or sys.stdout)

    s = rep["setup"]
    emit(
        f"Sweep bench: {s['trials']} trials, digits {s['hidden']}, batch {s['batch_size']}, "
        f"{s['epochs']} epochs, SGD momentum {s['momentum']}, lr log-uniform "
        f"{s['lr_loguniform']}, weight decay log-uniform {s['weight_decay_loguniform']}, "
        f"ASHA min {s['asha']['min_epochs']} epochs × {s['asha']['reduction_factor']}; "
        f"{rep['machine']}, {s['cpus']} CPUs for trials, one a trial."
    )
    emit(
        "Ratios are against Ray Tune with the same scheduler (× trials/s, × epochs, best "
        "accuracy less its in points).\n"
    )
    head = (
        "| run | trials | wall (s) | trials/s | × Ray Tune | epochs | × Ray Tune "
        "| best val acc (%) | Δ (points) | trials by status | load 1-min before/after |"
    )
    emit(head)
    emit("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for r in rep["runs"]:
        load = "/".join(
            "—" if x is None else f"{x:.2f}" for x in (r["load_before"], r["load_after"])
        )
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items())) or "—"
        emit(
            f"| {r['label']} | {r['trials']} | {_f(r['wall_s'], '.1f')} "
            f"| {_f(r['trials_per_s'], '.2f')} "
            f"| {_f(r['speed_x'], '.1f', '×')} | {_f(r['epochs'], 'd')} "
            f"| {_f(r['epochs_x'], '.2f', '×')} "
            f"| {_f(percent(r['best_val_accuracy']), '.1f')} "
            f"| {_f(r['best_delta_points'], '+.1f')} | {statuses} | {load} |"
        )
    packed = [r for r in rep["runs"] if r["name"] in PACKED_OF]
    if packed:
        cpus = s["cpus"] or 1
        emit(
            "\nPacked against the same sweep unpacked (× trials/s, best accuracy less its in "
            f"points); the machine's time a trial: wall × {cpus} CPUs ÷ trials.\n"
        )
        emit("| packed run | trials | trials/s | × unpacked | × Ray Tune | best Δ unpacked "
             "(points) | trials by pack size | ms a trial, packed / unpacked |")  # fmt: skip
        emit("|---|---|---|---|---|---|---|---|")
        by_name = {r["name"]: r for r in rep["runs"]}
        for r in packed:
            alone = by_name.get(PACKED_OF[r["name"]]) or {}
            cost = [
                1000 * x["wall_s"] * cpus / x["trials"] if x.get("wall_s") and x["trials"] else None
                for x in (r, alone)
            ]
            packs = ", ".join(f"{k}: {v}" for k, v in r["packs"].items()) or "—"
            emit(
                f"| {r['label']} | {r['trials']} | {_f(r['trials_per_s'], '.2f')} "
                f"| {_f(r['unpacked_speed_x'], '.2f', '×')} | {_f(r['speed_x'], '.1f', '×')} "
                f"| {_f(r['unpacked_delta_points'], '+.1f')} | {packs} "
                f"| {_f(cost[0], '.0f')} / {_f(cost[1], '.0f')} |"
            )
    emit("\n| target | measured | needed | met |")
    emit("|---|---|---|---|")
    for t in rep["targets"]:
        met = {True: "yes", False: "NO", None: "n/a (a run is missing)"}[t["met"]]
        emit(f"| {t['name']} | {_f(t['measured'], '.2f')} | {t['needed']} | {met} |")
    notes = [
        f"Ray Tune, the loop and the plain jobs train the same {s['trials']} (lr, weight decay) "
        f"pairs (numpy seed {s['configs_seed']}); gradq's sweeps draw their own "
        f"{s['trials']} random points from the same ranges (sweep seed {s['sweep_seed']}).",
        "best val acc: the highest per-epoch validation accuracy of any trial.",
    ]
    if rep["ray_init_s"] is not None:
        notes.append(f"Ray Tune's ray.init: {rep['ray_init_s']:.1f} s (not in its wall time).")
    parallel = [f"{r['label']} {r['parallel']}" for r in rep["runs"] if r.get("parallel")]
    if parallel:
        notes.append(
            "the packed rows' Ray Tune ratio is against the Ray Tune row (its trials/s, a "
            "rate) whatever their trials; a sweep's parallel: " + ", ".join(parallel)
        )
    for r in rep["runs"]:
        if r.get("median_job_s"):
            phases = ", ".join(f"{k} {v:.2f}" for k, v in r["median_job_s"].items())
            notes.append(f"{r['label']}: median seconds a job: {phases}")
        if r["error"]:
            notes.append(f"{r['label']}: not measured: {r['error']}")
        notes += [f"{r['label']}: {n}" for n in r["notes"]]
    emit("\n" + "\n".join(f"- {n}" for n in notes))
    for profile in rep.get("profiles") or []:
        print_profile(profile, file=file)


def percent(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _f(x: float | None, spec: str, suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


# --- Ray Tune -------------------------------------------------------------------------------


def tune_trial(config: dict[str, Any], epochs: int) -> None:
    """One Ray Tune trial: gradq's ``core.train.train`` on the trial's spec, reporting each
    epoch's validation accuracy to Tune (whose ASHA may stop it between two reports)."""
    from ray import tune

    from core.spec import parse_spec
    from core.train import train

    train(parse_spec(trial_spec(config["trial"], epochs)), callbacks=[EpochReporter(tune.report)])


@contextlib.contextmanager
def local_ray(cpus: int) -> Iterator[float]:
    """A local Ray of ``cpus`` CPUs in a temporary folder of its own; yields ray.init's
    seconds. At the end Ray is shut down and any process of that folder stopped."""
    import ray

    temp = Path(tempfile.mkdtemp(prefix="gqt", dir="/tmp"))  # short: Ray's socket paths
    # the trial processes import gradq (and this module) like this process
    paths = [str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    t0 = time.perf_counter()
    try:
        ray.init(
            num_cpus=cpus, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False,
            logging_level=logging.WARNING, configure_logging=True,
        )  # fmt: skip
        yield time.perf_counter() - t0
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        stop_processes_of(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def tune_run(
    name: str, configs: list[dict[str, float]], epochs: int, storage: Path, tries: int = 2
) -> Run:
    """``Tuner.fit`` of the configurations (ASHA for ``tune-asha``) on the running Ray; a fit
    that raises (Tune itself, not a trial: a trial's error is its row's) is tried again, once,
    as a fresh experiment, and the row says so: Ray Tune is the anchor of every ratio."""
    for attempt in range(1, tries + 1):
        try:
            run = tune_fit(name, configs, epochs, storage)
        except Exception as exc:
            if attempt == tries:
                raise
            say(f"[sweep bench]   Ray Tune's fit raised ({type(exc).__name__}: {exc}); again")
            continue
        if attempt > 1:
            run.notes.append(f"measured at the fit's try {attempt} (an earlier fit raised)")
        return run
    raise AssertionError("unreachable")


def tune_fit(name: str, configs: list[dict[str, float]], epochs: int, storage: Path) -> Run:
    """One ``Tuner.fit`` of the configurations (ASHA for ``tune-asha``) on the running Ray."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    asha = RUNS[name][1]
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=ASHA["min_epochs"],
            reduction_factor=ASHA["reduction_factor"],
        )
        if asha
        else None
    )
    t0 = time.time()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(tune_trial, epochs=epochs), {"cpu": 1}),
        param_space=tune_param_space(configs),
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", scheduler=scheduler),
        run_config=tune.RunConfig(
            name=f"{name}-{uuid.uuid4().hex[:8]}", storage_path=str(storage), verbose=0
        ),
    )
    grid = tuner.fit()
    wall = time.time() - t0
    trials, notes = [], []
    for i in range(len(grid)):
        result = grid[i]
        config = (result.config or {})["trial"]
        frame = result.metrics_dataframe
        curve = (
            [float(v) for v in frame["val_accuracy"]]
            if frame is not None and "val_accuracy" in frame
            else []
        )
        if result.error is not None:
            status = "failed"
            notes.append(f"lr {config['lr']:.3g}: {type(result.error).__name__}: {result.error}")
        else:
            status = "succeeded" if len(curve) == epochs else "pruned"
        trials.append(Trial.from_curve(config, curve, status))
    if len(trials) != len(configs):
        raise RuntimeError(f"Ray Tune returned {len(trials)} trials of {len(configs)}")
    if all(t.status == "failed" for t in trials):
        raise RuntimeError(f"every Ray Tune trial failed, e.g. {notes[0]}")
    return Run(name=name, wall_s=wall, trials=trials, notes=notes[:3])


# --- the sequential loop --------------------------------------------------------------------


def keep_accuracy(curve: list[float | None], metrics: dict[str, float]) -> None:
    curve.append(metrics["val_accuracy"])


def loop_run(configs: list[dict[str, float]], epochs: int) -> Run:
    from core.spec import parse_spec
    from core.train import Diverged, train

    trials = []
    t0 = time.time()
    for config in configs:
        curve: list[float | None] = []
        status = "succeeded"
        try:
            reporter = EpochReporter(functools.partial(keep_accuracy, curve))
            train(parse_spec(trial_spec(config, epochs)), callbacks=[reporter])
        except Diverged:
            status = "failed"
        trials.append(Trial.from_curve(config, curve, status))
    return Run(name="loop", wall_s=time.time() - t0, trials=trials)


# --- gradq over HTTP --------------------------------------------------------------------------


@contextlib.contextmanager
def gradq_service(cpus: int) -> Iterator[str]:
    """``gradq serve`` (API + dispatcher + a local Ray of ``cpus`` CPUs) on 127.0.0.1 with
    its database and MLflow store in a temporary folder; yields its URL; stops everything."""
    from deploy_stack import Stack
    from gradq_service import GRADQ, service_env

    folder = Path(tempfile.mkdtemp(prefix="gradq-bench-sweep-"))
    ray_temp = Path(tempfile.mkdtemp(prefix="gqs", dir="/tmp"))
    stack = Stack(folder=folder, ray_temp=ray_temp)
    env = service_env(folder)
    env.update(
        RAY_TMPDIR=str(ray_temp),
        GRADQ_RAY_NUM_CPUS=str(cpus),
        GRADQ_MAX_QUEUED_PER_TENANT="100000",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    try:
        port = stack.start_server("serve", [GRADQ, "serve", "--no-mlflow-ui"], env)
        url = f"http://127.0.0.1:{port}"
        import httpx

        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=5).is_success:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"gradq serve not ready in 180 s:\n{stack.logs()}")
            time.sleep(0.3)
        yield url
    finally:
        stack.stop_all()
        stop_processes_of(str(ray_temp))
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)


def stamp(value: str) -> float:
    """Seconds since the epoch of an ISO time the API answered (UTC when it names no zone)."""
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def wait_named(http: Any, name: str, count: int, timeout: float, poll: float) -> None:
    """Until ``count`` jobs named ``name`` are terminal: one listing per ``poll`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        items = http.get("/v1/jobs", params={"name": name, "limit": 200}).raise_for_status()
        done = sum(j["status"] in TERMINAL for j in items.json()["items"])
        if done >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count - done} of {count} jobs {name!r} not terminal")
        time.sleep(poll)


def job_trial(
    http: Any, job_id: str, config: dict[str, float]
) -> tuple[Trial, float, dict[str, Any]]:
    """A terminal job as a trial (epochs from its progress, the best of its ``accuracy/val``
    curve), when it finished, and its result's ``timings`` (empty without a result)."""
    job = http.get(f"/v1/jobs/{job_id}").raise_for_status().json()
    answer = http.get(f"/v1/jobs/{job_id}/metrics", params={"key": "accuracy/val"})
    points = answer.raise_for_status().json()["metrics"].get("accuracy/val", [])
    curve = [p["value"] for p in sorted(points, key=lambda p: p["step"])]
    epochs = (job.get("progress") or {}).get("epoch", len(curve))
    trial = Trial.from_curve(config, curve, job["status"], epochs=epochs)
    result = job.get("result") or {}
    if trial.best is None:  # no curve: the final metrics, if any
        trial.best = (result.get("metrics") or {}).get("val_accuracy")
    if result:
        trial.pack = (result.get("pack") or {}).get("members", 1)
    timings = result.get("timings") or {}
    return trial, stamp(job["finished_at"] or job["updated_at"]), timings


def median_phases(timings: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds a job spent per attempt (wall, worker CPU), training, and in MLflow on
    the attempt's own thread, over the jobs that have ``timings``; with the task's start
    marked, also its beginning (``begin``: from the task's start to its MLflow run started)
    and its end (``end``: from trained to the MLflow run finished). A pack's members share
    its worker's CPU and threads: their ``attempt_cpu`` is the pack's, not their own."""
    phases: dict[str, list[float]] = {"attempt": [], "attempt_cpu": [], "train": [], "mlflow": []}
    for t in timings:
        if not t:
            continue
        phases["attempt"].append(t["attempt_s"])
        phases["attempt_cpu"].append(t["attempt_cpu_s"])
        phases["train"].append(t["trained"] - t["tracker_started"])
        phases["mlflow"].append(t.get("mlflow_critical_s", 0.0))
        if "task_start" in t:
            phases.setdefault("begin", []).append(t["tracker_started"] - t["task_start"])
        if "tracker_finished" in t:
            phases.setdefault("end", []).append(t["tracker_finished"] - t["trained"])
    return {k: statistics.median(v) for k, v in phases.items() if v}


def warm_up(http: Any, cpus: int, timeout: float) -> None:
    """One one-epoch job per CPU: the service's worker processes start and import."""
    name = f"{TRIAL_NAME}-warm-up-{uuid.uuid4().hex[:6]}"
    spec = trial_spec({"lr": 0.05, "weight_decay": 1e-4}, epochs=1, name=name)
    for _ in range(cpus):
        http.post("/v1/jobs", json=spec).raise_for_status()
    wait_named(http, name, cpus, timeout, 0.2)


def jobs_run(http: Any, configs: list[dict[str, float]], epochs: int, timeout: float) -> Run:
    name = f"{TRIAL_NAME}-jobs-{uuid.uuid4().hex[:6]}"
    specs = [trial_spec(c, epochs, name=name) for c in configs]
    t0 = time.time()
    ids = []
    for spec in specs:
        answer = http.post("/v1/jobs", json=spec)
        if answer.status_code != 201:
            raise RuntimeError(f"POST /v1/jobs answered {answer.status_code}: {answer.text[:300]}")
        ids.append(answer.json()["id"])
    submitted = time.time() - t0
    wait_named(http, name, len(ids), timeout, 0.2)
    seen = time.time() - t0  # when the poll saw them all terminal: a check on the clocks
    read = [job_trial(http, i, c) for i, c in zip(ids, configs, strict=True)]
    wall = max(end for _, end, _ in read) - t0
    return Run(
        name="jobs",
        wall_s=wall,
        trials=[t for t, _, _ in read],
        extra={
            "submit_s": submitted,
            "seen_done_s": seen,
            "median_job_s": median_phases([x for _, _, x in read]),
        },
    )


def sweep_run(
    http: Any, name: str, *, trials: int, epochs: int, seed: int, parallel: int, timeout: float
) -> Run:
    """A gradq sweep through the HTTP contract of issue 17 (``POST /v1/sweeps``, then
    ``GET /v1/sweeps/{id}`` until it is terminal, then its trials as jobs)."""
    body = sweep_spec(
        trials=trials, epochs=epochs, seed=seed, parallel=parallel, asha=RUNS[name][1],
        pack=name in PACKED_OF,
    )  # fmt: skip
    t0 = time.time()
    answer = http.post("/v1/sweeps", json=body)
    if answer.status_code in (404, 405) and "sweep" not in answer.text.lower():
        return Run(name=name, wall_s=None, trials=[], error="this server has no /v1/sweeps")
    if answer.status_code != 201:
        raise RuntimeError(f"POST /v1/sweeps answered {answer.status_code}: {answer.text[:500]}")
    sweep_id = answer.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        sweep = http.get(f"/v1/sweeps/{sweep_id}").raise_for_status().json()
        if sweep["status"] in SWEEP_TERMINAL:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"sweep {sweep_id} not terminal after {timeout:g} s: {sweep}")
        time.sleep(0.2)
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"sort": "trial", "limit": 200} | (
            {"cursor": cursor} if cursor else {}
        )
        page = http.get(f"/v1/sweeps/{sweep_id}/trials", params=params).raise_for_status().json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    read = []
    outside = 0
    for item in items:
        p = item["params"]
        config = {"lr": p["optimizer.lr"], "weight_decay": p["regularization.weight_decay"]}
        lr_in = LR_RANGE[0] <= config["lr"] <= LR_RANGE[1]
        outside += not (lr_in and WD_RANGE[0] <= config["weight_decay"] <= WD_RANGE[1])
        read.append(job_trial(http, item["id"], config))
    end = stamp(sweep["finished_at"]) if sweep.get("finished_at") else max(e for _, e, _ in read)
    notes = []
    if sweep["status"] != "succeeded":
        notes.append(f"the sweep ended {sweep['status']}: {sweep.get('error')}")
    if len(items) != trials:
        notes.append(f"{len(items)} trials of {trials}")
    if outside:
        notes.append(f"{outside} sampled points outside the ranges")
    best = sweep.get("best") or {}
    return Run(
        name=name,
        wall_s=end - t0,
        trials=[t for t, _, _ in read],
        notes=notes,
        extra={
            "parallel": parallel,
            "sweep_id": sweep_id,
            "sweep_status": sweep["status"],
            "sweep_best_objective": best.get("objective"),
            "last_trial_end_s": max((e for _, e, _ in read), default=t0) - t0,
            "median_job_s": median_phases([x for _, _, x in read]),
        },
    )


def stop_processes_of(marker: str) -> None:
    """SIGKILL every process (but this one) whose command line holds ``marker``: the local
    Ray daemons of a temporary folder this bench made."""
    from deploy_stack import kill, processes

    ours = [p for p, (_, cmd) in processes().items() if marker in cmd and p != os.getpid()]
    kill(ours, grace=5)


# --- where a packed trial's time goes (in this process) ------------------------------------------

# (label, module, "Class.method" or function): what the in-process profile times,
# in the order printed; a phase's figure includes the phases indented under it
PHASES: list[tuple[str, str, str]] = [
    ("controller: ask (Optuna) and queue the trials", "workers.sweeps", "SweepController._ask"),
    ("controller: tell (Optuna) as each trial ended", "workers.sweeps", "SweepController._tell"),
    ("database: claim the trials (one statement)", "db.store", "JobStore.claim"),
    ("database: heartbeats (one statement a beat)", "db.store", "JobStore.heartbeat_many"),
    ("database: record the run (set_run)", "db.store", "JobStore.set_run"),
    ("database: the final write (finish)", "db.store", "JobStore.finish"),
    ("database: log_models best? (read the sweep)", "workers.task", "_logs_model"),
    (
        "MLflow: run start (experiment, run, params, tags)",
        "workers.tracking.run",
        "JobTracker.start",
    ),
    ("MLflow: dataset input", "workers.tracking.run", "JobTracker.log_dataset"),
    (
        "MLflow: per-epoch tracking callback (buffering)",
        "workers.tracking.buffer",
        "TrackingCallback.on_epoch_end",
    ),
    (
        "MLflow: checkpoint handed to the run",
        "workers.tracking.buffer",
        "TrackingCallback.on_checkpoint",
    ),
    (
        "MLflow: metric sends (background threads)",
        "workers.tracking.buffer",
        "RunBuffer._send_metrics",
    ),
    (
        "MLflow: checkpoint uploads (background threads)",
        "workers.tracking.buffer",
        "RunBuffer._send_checkpoint",
    ),
    ("MLflow: finish (all of it)", "workers.tracking.run", "JobTracker.finish"),
    ("  of which the learning-curve PNG", "workers.tracking.run", "learning_curve_png"),
    ("  of which model logging (log_models: best)", "workers.tracking.run", "log_model"),
    ("training: train_packed (all of it)", "workers.pack", "train_packed"),
    ("training: train, one trial alone (all of it)", "workers.task", "train"),
    ("  of which members' start (models, callbacks)", "core.packed", "_Run.start_member"),
    ("  of which per-epoch evaluation (per member)", "core.train", "EpochEvaluation.record"),
    ("  of which per-epoch evaluation (per pack)", "core.packed", "PackEvaluation.evaluate"),
    ("  of which the validator (gradient checks)", "core.train", "GradientChecks.run"),
    ("  of which final metrics (per member)", "core.packed", "_Run.finish"),
]  # fmt: skip


class PhaseTimer:
    """Wall seconds and calls of each phase of :data:`PHASES`, on every thread, while
    installed: each named function is wrapped where it is looked up, and put back after."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys((p[0] for p in PHASES), 0.0)
        self.calls: dict[str, int] = dict.fromkeys((p[0] for p in PHASES), 0)
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                with self._lock:
                    self.seconds[label] += dt
                    self.calls[label] += 1

        return timed

    def __enter__(self) -> PhaseTimer:
        import importlib

        for label, module, name in PHASES:
            owner: Any = importlib.import_module(module)
            *path, attr = name.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            setattr(owner, attr, self._wrap(label, original))
            self._undo.append(functools.partial(setattr, owner, attr, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def pack_profile(*, trials: int, epochs: int, seed: int, pack: bool = True) -> dict[str, Any]:
    """One sweep of ``trials`` random trials (``parallel`` = ``trials``) driven in this
    process, as the service drives it but without Ray: the controller, on a thread of its own
    stepping every 0.1 s as in the service, asks and queues them; they are claimed and
    trained as ONE pack (``workers.pack.run_pack``; ``pack`` False: each alone,
    ``workers.task.run_attempt``, one after the other) while it tells those that ended; it
    ends the sweep. The job database and MLflow on SQLite in a temporary folder, the sweep's
    MLflow parent run as the service has it. Returns the wall seconds of the whole (``wall_s``)
    and of each part, the seconds and calls of each phase of :data:`PHASES` (every thread),
    and the trials' statuses."""
    from core.sweep import parse_sweep
    from db.migrate import upgrade
    from db.session import make_engine
    from db.store import JobStore
    from db.sweeps import SweepStore
    from workers.pack import run_pack
    from workers.sweeps import SweepController
    from workers.task import WorkerConfig, run_attempt
    from workers.tracking.sweep import SweepRuns

    folder = Path(tempfile.mkdtemp(prefix="gradq-bench-pack-profile-"))
    try:
        db_url = f"sqlite:///{folder}/gradq.db"
        upgrade(db_url)
        config = WorkerConfig(
            database_url=db_url,
            tracking_uri=f"sqlite:///{folder}/mlflow.db",
            artifact_root=str(folder / "artifacts"),
        )
        engine = make_engine(db_url)
        controller = SweepController(
            SweepStore(engine), JobStore(engine), db_url, owner="bench",
            tracking=SweepRuns(config.tracking_uri, artifact_root=config.artifact_root),
        )  # fmt: skip
        body = sweep_spec(
            trials=trials, epochs=epochs, seed=seed, parallel=trials, asha=False, pack=pack
        )
        sweep = parse_sweep(body)
        sweep_id = controller.sweeps.create(
            spec=sweep.spec.model_dump(mode="json"), name=body["name"]
        ).id
        parts: dict[str, float] = {}
        stop = threading.Event()
        steps = threading.Thread(target=controller.run, args=(stop,), name="bench-sweeps")
        with PhaseTimer() as timer:
            t0 = time.perf_counter()
            steps.start()
            try:
                while len(controller.jobs.list(status="queued", limit=trials + 1)[0]) < trials:
                    time.sleep(0.02)
                parts["controller: until every trial is queued"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                jobs = controller.jobs.claim(owner="bench", limit=trials, lease_seconds=60)
                if pack:
                    statuses = run_pack(config, jobs)
                else:
                    statuses = [run_attempt(config, job) for job in jobs]
                parts["the trials' attempts (claim to final writes)"] = time.perf_counter() - t1
                t2 = time.perf_counter()
                while controller.sweeps.get(sweep_id=sweep_id).status not in SWEEP_TERMINAL:
                    time.sleep(0.02)
                parts["controller: from there until the sweep ended"] = time.perf_counter() - t2
                wall = time.perf_counter() - t0
            finally:
                stop.set()
                steps.join()
        engine.dispose()
        return {
            "trials": trials,
            "epochs": epochs,
            "pack": pack,
            "wall_s": wall,
            "parts_s": parts,
            "phases": [
                {"phase": label, "seconds": timer.seconds[label], "calls": timer.calls[label]}
                for label, _, _ in PHASES
            ],
            "statuses": dict(Counter(statuses)),
            "sweep_status": controller.sweeps.get(sweep_id=sweep_id).status,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def print_profile(profile: dict[str, Any], file: Any = None) -> None:
    """The in-process profile as a table of milliseconds per trial."""

    def emit(*lines: str) -> None:
        print(*lines, file=file or sys.stdout)

    n = profile["trials"]
    how = "one pack" if profile["pack"] else "each alone, one after the other"
    emit(
        f"\nWhere a trial's time goes: {n} trials × {profile['epochs']} epochs in this process "
        f"({how}; SQLite job database and MLflow store, no Ray), "
        f"{profile['wall_s']:.2f} s in all = {1000 * profile['wall_s'] / n:.0f} ms a trial; "
        f"sweep {profile['sweep_status']}, trials {profile['statuses']}. Seconds on every "
        "thread (the MLflow senders run beside the training), so the rows need not add up.\n"
    )
    emit("| part / phase | calls | s in all | ms a trial |")
    emit("|---|---:|---:|---:|")
    for part, s in profile["parts_s"].items():
        emit(f"| **{part}** | | {s:.3f} | {1000 * s / n:.1f} |")
    for p in profile["phases"]:
        ms = 1000 * p["seconds"] / n
        emit(f"| {p['phase']} | {p['calls']} | {p['seconds']:.3f} | {ms:.1f} |")


# --- the bench ---------------------------------------------------------------------------------


def measured(name: str, runs: dict[str, Run], work: Callable[[], Run]) -> None:
    """Run one part; a failure is recorded on its row (the other parts still print)."""
    say(f"[sweep bench] {RUNS[name][0]} …")
    before = os.getloadavg()[0]
    try:
        run = work()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        run = Run(name=name, wall_s=None, trials=[], error=f"{type(exc).__name__}: {exc}"[:500])
    run.load_before, run.load_after = before, os.getloadavg()[0]
    runs[name] = run
    say(f"[sweep bench]   wall {run.wall_s} s, {run.epochs} epochs, best {run.best}")


def parse_only(values: list[str] | None) -> list[str]:
    """``--only a,b --only c`` → the runs named (and ``profile``), in the order printed; all
    when none."""
    known = [*RUNS, PROFILE]
    if not values:
        return known
    names = {n.strip() for v in values for n in v.split(",") if n.strip()}
    unknown = names - set(known)
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {sorted(unknown)}; known: {known}")
    return [n for n in known if n in names]


@contextlib.contextmanager
def report_stream() -> Iterator[Any]:
    """The report's stream: this process's standard output, while everything else written
    to it meanwhile (Ray Tune's tables, a local Ray's messages, from any thread or child
    process) goes to standard error, so that ``--json`` prints JSON alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with open(saved, "w", closefd=False) as out:
            yield out
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", action="append", metavar="NAME",
        help=f"run only these (repeatable or comma-separated): {', '.join(RUNS)}",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument(
        "--big-trials", type=int, default=128, help="the big sweeps' trials (sweep-big*)"
    )
    parser.add_argument("--big-parallel", type=int, default=32, help="the big sweeps' parallel")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="numpy seed of the shared configs")
    parser.add_argument("--sweep-seed", type=int, default=0, help="gradq sweeps' search seed")
    parser.add_argument(
        "--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of each local Ray (one a trial)"
    )
    parser.add_argument(
        "--parallel", type=int, default=32, help="the --trials gradq sweeps' parallel"
    )
    parser.add_argument(
        "--profile-trials", type=int, default=32, help="the in-process profile's trials"
    )
    parser.add_argument(
        "--profile-unpacked", action="store_true",
        help="profile the same sweep unpacked too (its trials one after the other)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="a few trials and epochs: --trials 4 --big-trials 8 --big-parallel 4 --parallel 4 "
        "--epochs 2 --profile-trials 4",
    )  # fmt: skip
    parser.add_argument("--no-warm", action="store_true", help="no warm-up jobs on gradq serve")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a run may take")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.big_trials, args.big_parallel, args.parallel = 4, 8, 4, 4
        args.epochs, args.profile_trials = 2, 4
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    logging.basicConfig(level=logging.WARNING)
    names = parse_only(args.only)
    with report_stream() as out:
        bench(args, names, out)


def bench(args: Any, names: list[str], out: Any) -> None:
    configs = sample_configs(args.trials, args.seed)
    runs: dict[str, Run] = {}
    ray_init_s = None

    tunes = [n for n in names if n.startswith("tune")]
    if tunes:  # first, and alone: its Ray is shut down before the service starts its own
        storage = Path(tempfile.mkdtemp(prefix="gradq-bench-tune-"))
        try:
            with local_ray(args.cpus) as ray_init_s:
                for name in tunes:
                    measured(
                        name, runs, functools.partial(tune_run, name, configs, args.epochs, storage)
                    )
        except Exception as exc:  # ray.init itself failed
            traceback.print_exc(file=sys.stderr)
            for name in tunes:
                runs.setdefault(name, Run(name, None, [], error=f"ray.init: {exc}"[:500]))
        finally:
            shutil.rmtree(storage, ignore_errors=True)
    if "loop" in names:
        measured("loop", runs, lambda: loop_run(configs, args.epochs))
    served = [n for n in names if n == "jobs" or n.startswith("sweep")]
    if served:
        import httpx

        say("[sweep bench] starting gradq serve …")
        with gradq_service(args.cpus) as url, httpx.Client(base_url=url, timeout=60) as http:
            if not args.no_warm:
                warm_up(http, args.cpus, args.timeout)
            if "jobs" in served:
                measured("jobs", runs, lambda: jobs_run(http, configs, args.epochs, args.timeout))
            for name in (n for n in served if n.startswith("sweep")):
                big = name in BIG
                work = functools.partial(
                    sweep_run, http, name, trials=args.big_trials if big else args.trials,
                    epochs=args.epochs, seed=args.sweep_seed,
                    parallel=args.big_parallel if big else args.parallel, timeout=args.timeout,
                )  # fmt: skip
                measured(name, runs, work)
    profiles = []
    if PROFILE in names:  # last: alone on the machine, no service running
        for pack in (True, False) if args.profile_unpacked else (True,):
            say(f"[sweep bench] in-process profile, {'packed' if pack else 'unpacked'} …")
            try:
                profiles.append(
                    pack_profile(
                        trials=args.profile_trials,
                        epochs=args.epochs,
                        seed=args.sweep_seed,
                        pack=pack,
                    )
                )
            except Exception:
                traceback.print_exc(file=sys.stderr)

    rep = report(
        [runs[n] for n in RUNS if n in runs],
        configs_seed=args.seed,
        sweep_seed=args.sweep_seed,
        ray_init_s=ray_init_s,
        trials=args.trials,
        epochs=args.epochs,
        cpus=args.cpus,
        profiles=profiles,
    )
    if args.json:
        print(json.dumps(rep, indent=2), file=out)
    else:
        print_report(rep, file=out)


if __name__ == "__main__":
    main()
