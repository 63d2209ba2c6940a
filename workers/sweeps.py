"""The sweep controller: asks Optuna for trials, queues each as an ordinary job, tells Optuna
how each ended, and ends the sweep.

It runs on a thread of its own in every dispatcher process (``Dispatcher.run`` starts
:meth:`SweepController.run`); a lease on each sweep (``db.sweeps.SweepStore.claim``) makes one
controller drive it at a time, and another take it over once a stopped controller's lease
ran out.

The searcher's state is an Optuna study per sweep in an ``RDBStorage`` beside gradq's
database (:func:`optuna_storage`): the same PostgreSQL database in a schema of its own
(``optuna``, :func:`optuna_schema`), or a SQLite file next to gradq's. Optuna's tables, and
the Alembic version table it keeps for them, stay out of gradq's schema and its migrations.

No trial is lost or made twice across a crash:

* a trial's job id is derived from the sweep and the trial's number
  (``db.sweeps.trial_job_id``) and submitted with ``may_exist``, so submitting it again
  finds the job an earlier try stored;
* a trial Optuna handed out (RUNNING in the study) that has no ``trials`` row — the
  controller stopped between the ask and the record — is adopted at the next step: its job
  is submitted from the parameters the study stored, and it is never asked again;
* a trial is told to Optuna once its job ended; telling it again after a crash is skipped
  by Optuna (``skip_if_finished``) and recorded once (``told``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

from core.spec import InvalidSpec, SpecLimits
from core.sweep import Dimension, Sweep, better, parse_sweep, trial_spec
from db.errors import InvalidTransition, JobNotFound, QueueFull, StoreError
from db.store import JobStore
from db.submits import SubmitRequest
from db.sweeps import ACTIVE, SweepLeaseLost, SweepStore, TrialView, trial_job_id

log = logging.getLogger("gradq.sweeps")

OPTUNA_SCHEMA = "optuna"
LEASE_SECONDS = 15.0
ASK_GROUP = 4  # trials asked of Optuna and queued together


class SweepTracking(Protocol):
    """What the controller writes to MLflow: the sweep's parent run, its best trial as it
    improves and its results table at the end (``workers.tracking.sweep``)."""

    def start(self, *, sweep_id: str, tenant: str, sweep: Sweep) -> tuple[str, str]: ...

    def best(self, *, run_id: str, step: int, best: dict[str, Any]) -> None: ...

    def finish(
        self,
        *,
        run_id: str,
        status: str,
        rows: list[dict[str, Any]],
        best: dict[str, Any] | None,
        register_as: str | None,
        tenant: str,
    ) -> None: ...


def optuna_storage(database_url: str) -> Any:
    """Optuna's ``RDBStorage`` beside gradq's database (one per process and URL): on
    PostgreSQL its tables in the schema ``optuna`` of the same database; on SQLite in a file
    of its own next to gradq's (``gradq.db`` → ``gradq.optuna.db``); an in-memory SQLite
    database gets an in-memory study store."""
    with _STORAGE_LOCK:
        if database_url not in _STORAGES:
            _STORAGES[database_url] = _make_storage(database_url)
        return _STORAGES[database_url]


_STORAGES: dict[str, Any] = {}
_STORAGE_LOCK = threading.Lock()


def _make_storage(database_url: str) -> Any:
    import optuna
    from sqlalchemy import create_engine, text

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = urlparse(database_url)
    if url.scheme.startswith("postgresql"):
        schema = optuna_schema(database_url)
        engine = create_engine(database_url)
        try:
            with engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        finally:
            engine.dispose()
        return optuna.storages.RDBStorage(
            database_url,
            engine_kwargs={"connect_args": {"options": f"-c search_path={schema}"}},
        )
    path = url.path
    if url.scheme.startswith("sqlite") and path not in ("", "/", "/:memory:"):
        path = database_url.split("///", 1)[1]
        stem, dot, suffix = path.rpartition(".")
        own = f"{stem}.optuna.{suffix}" if dot else f"{path}.optuna"
        # a write-ahead log, as gradq's own SQLite file (the file keeps the mode); every
        # commit still reaches the disk (a trial's number must never be handed out twice)
        with contextlib.closing(sqlite3.connect(own, timeout=30)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        return optuna.storages.RDBStorage(
            f"sqlite:///{own}", engine_kwargs={"connect_args": {"timeout": 30}}
        )
    return optuna.storages.InMemoryStorage()


def optuna_schema(database_url: str) -> str:
    """The PostgreSQL schema of Optuna's tables: ``optuna``, or ``<schema>_optuna`` when
    gradq's tables are in a schema of their own (the URL's ``options=-csearch_path=…``)."""
    from sqlalchemy import make_url

    options = str(make_url(database_url).query.get("options") or "")
    match = re.search(r"search_path\s*=\s*([A-Za-z_][A-Za-z0-9_]*)", options)
    if match is None or match.group(1) == "public":
        return OPTUNA_SCHEMA
    return f"{match.group(1)}_{OPTUNA_SCHEMA}"


def study_name(sweep_id: str) -> str:
    return f"gradq-sweep-{sweep_id}"


@dataclass
class _Held:
    """What the controller keeps of a sweep it holds."""

    sweep: Sweep
    study: Any
    run_id: str | None = None
    # Optuna may hold trials handed out with no job: at a takeover (the controller before
    # may have stopped between an ask and its record), or after the queue refused some
    orphans_possible: bool = True


@dataclass
class SweepController:
    sweeps: SweepStore
    jobs: JobStore
    database_url: str
    tracking: SweepTracking | None = None
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:sweeps")
    lease_seconds: float = LEASE_SECONDS
    limits: SpecLimits = field(default_factory=SpecLimits)
    max_queued: int | None = None  # a tenant's queued jobs (its quota), trials included
    interval_seconds: float = 0.1  # the time between two steps of the sweeps
    clock: Callable[[], float] = time.monotonic
    _held: dict[str, _Held] = field(default_factory=dict)
    _last_claim: float = float("-inf")
    _last_step: float = float("-inf")

    # --- the loop --------------------------------------------------------------------------

    def tick(self, *, now: bool = False) -> None:
        """Claim the sweeps no controller holds and step each held one; at most every
        ``interval_seconds`` unless ``now``."""
        t = self.clock()
        if not now and t - self._last_step < self.interval_seconds:
            return
        self._last_step = t
        # leases renewed every third of a lease; a new sweep (or one a stopped controller
        # left) taken at the next step
        if t - self._last_claim >= self.lease_seconds / 3 or self.sweeps.unclaimed():
            self._last_claim = t
            ids = self.sweeps.claim(owner=self.owner, lease_seconds=self.lease_seconds)
            for gone in set(self._held) - set(ids):
                del self._held[gone]
            for sweep_id in ids:
                if sweep_id not in self._held:
                    self._adopt(sweep_id)
        for sweep_id in list(self._held):
            try:
                self.step(sweep_id)
            except SweepLeaseLost:
                log.warning("sweep %s: another controller holds it now", sweep_id)
                self._held.pop(sweep_id, None)
            except StoreError as exc:
                log.warning("sweep %s: step failed (%s); retried", sweep_id, exc)

    def run(self, stop: threading.Event) -> None:
        """Step the sweeps every ``interval_seconds`` until ``stop`` is set, then give up
        their leases; a failing step (the database away) is logged and tried again."""
        try:
            while not stop.is_set():
                try:
                    self.tick(now=True)
                except Exception:
                    log.exception("sweep controller step failed; retrying")
                stop.wait(self.interval_seconds)
        finally:
            self.stop()

    def stop(self) -> None:
        """Give up every lease held (this controller is stopping)."""
        for sweep_id in list(self._held):
            try:
                self.sweeps.release(sweep_id=sweep_id, owner=self.owner)
            except StoreError as exc:
                log.warning("sweep %s: could not release it: %s", sweep_id, exc)
        self._held.clear()

    def _adopt(self, sweep_id: str) -> None:
        import optuna

        view = self.sweeps.get(sweep_id=sweep_id)
        try:
            sweep = parse_sweep(view.spec, limits=self.limits, max_trials=10**9)
        except InvalidSpec as exc:  # a spec stored under other limits: the sweep ends
            self.sweeps.finish(
                sweep_id=sweep_id, owner=self.owner, status="failed", error=f"invalid: {exc}"
            )
            return
        search = sweep.spec.search
        storage = optuna_storage(self.database_url)
        # a fresh sampler after a restart must not draw the points drawn before it again
        name = study_name(sweep_id)
        try:
            made = len(optuna.load_study(study_name=name, storage=storage).trials)
        except KeyError:
            made = 0
        seed = search.seed + made
        if search.method == "grid":
            space = {d.path: list(range(len(d.values))) for d in sweep.dimensions}
            sampler: Any = optuna.samplers.GridSampler(space, seed=search.seed)
        elif search.method == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed)
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            direction="maximize" if sweep.direction == "max" else "minimize",
            load_if_exists=True,
        )
        self._held[sweep_id] = _Held(sweep, study, run_id=view.mlflow_run_id)

    # --- one step of one sweep -------------------------------------------------------------

    def step(self, sweep_id: str) -> None:
        held = self._held[sweep_id]
        view = self.sweeps.get(sweep_id=sweep_id)
        if view.status not in ACTIVE:
            del self._held[sweep_id]
            return
        if view.lease_owner != self.owner:  # its lease ran out and another controller took it
            raise SweepLeaseLost(f"sweep {sweep_id} is held by {view.lease_owner}")
        if view.status == "queued":
            self._start(sweep_id, view.tenant, held)
        # a step reads the trials' states only; the few that ended untold are read whole
        trials = self.sweeps.trial_states(sweep_id=sweep_id)
        to_tell = [t.number for t in trials if t.ended and not t.told]
        if to_tell:
            for trial in self.sweeps.trials(sweep_id=sweep_id, numbers=to_tell)[0]:
                if trial.ended and not trial.told:
                    self._tell(sweep_id, held, trial, view.best)
                    view = self.sweeps.get(sweep_id=sweep_id)
            trials = self.sweeps.trial_states(sweep_id=sweep_id)
        failed = sum(t.status.value == "failed" for t in trials) + len(
            [n for n in view.notes if isinstance(n, dict) and "trial" in n]
        )
        active = [t for t in trials if not t.ended]
        # a trial that ended after the tells above is told at the next step: the sweep ends
        # only once every trial was told
        untold = [t for t in trials if not t.told]
        stopping = view.cancel_requested or failed >= held.sweep.max_failed()
        if stopping:
            for state in active:
                with contextlib.suppress(InvalidTransition, JobNotFound):  # it ended meanwhile
                    self.jobs.request_cancel(job_id=state.job_id)
            if not untold:
                self._end(sweep_id, held, view, failed)
            return
        known = {t.number for t in trials}
        adopted = 0
        if held.orphans_possible:  # reading Optuna's trials costs: only when there may be some
            adopted = self._adopt_orphans(sweep_id, view.tenant, held, known)
            held.orphans_possible = False
        made = (
            len(known)
            + adopted
            + len([n for n in view.notes if isinstance(n, dict) and "trial" in n])
        )
        room = held.sweep.spec.search.parallel - len(active) - adopted
        total = held.sweep.trial_count()
        asked = self._ask(sweep_id, view.tenant, held, min(room, total - made)) if (
            room > 0 and made < total
        ) else 0  # fmt: skip
        made += asked
        # ``trials`` was read before this step made its trials: the sweep ends at a step
        # that made none, once every trial was told
        if made >= total and not untold and not adopted and not asked:
            self._end(sweep_id, held, view, failed)

    def _start(self, sweep_id: str, tenant: str, held: _Held) -> None:
        """The sweep's parent run in MLflow (found again after a restart), then running."""
        experiment = None
        if self.tracking is not None and held.run_id is None:
            try:
                held.run_id, experiment = self.tracking.start(
                    sweep_id=sweep_id, tenant=tenant, sweep=held.sweep
                )
            except Exception as exc:  # MLflow away: the trials run without a parent run
                log.warning("sweep %s: its MLflow run could not be made: %s", sweep_id, exc)
        self.sweeps.start(
            sweep_id=sweep_id,
            owner=self.owner,
            mlflow_run_id=held.run_id,
            mlflow_experiment_id=experiment,
        )

    def _distributions(self, sweep: Sweep) -> dict[str, Any]:
        import optuna.distributions as od

        out: dict[str, Any] = {}
        for d in sweep.dimensions:
            if d.categorical:
                out[d.path] = od.CategoricalDistribution(list(range(len(d.values))))
            elif d.kind == "int":
                out[d.path] = od.IntDistribution(int(d.low), int(d.high))
            else:
                out[d.path] = od.FloatDistribution(d.low, d.high, log=d.kind == "loguniform")
        return out

    @staticmethod
    def _values(sweep: Sweep, optuna_params: dict[str, Any]) -> dict[str, Any]:
        """The spec values of a point as Optuna stores it (categorical values by index)."""
        dims: dict[str, Dimension] = {d.path: d for d in sweep.dimensions}
        out = {}
        for path, value in optuna_params.items():
            d = dims[path]
            out[path] = d.values[int(value)] if d.categorical else value
        return out

    def _ask(self, sweep_id: str, tenant: str, held: _Held, count: int) -> int:
        """``count`` new trials, asked of Optuna and queued as jobs, ``ASK_GROUP`` at a time
        (the first start while the next are asked); how many were queued (a trial the queue
        refused, over the tenant's quota, is adopted later)."""
        distributions = self._distributions(held.sweep)
        queued = 0
        for start in range(0, count, ASK_GROUP):
            asked = [held.study.ask(distributions) for _ in range(min(ASK_GROUP, count - start))]
            placed = self._submit(sweep_id, tenant, held, [(t.number, t.params) for t in asked])
            queued += placed
            if placed < len(asked):  # the quota is reached: the rest wait as orphans
                break
        return queued

    def _adopt_orphans(self, sweep_id: str, tenant: str, held: _Held, known: set[int]) -> int:
        """Submit the trials Optuna handed out that have no ``trials`` row (the controller
        stopped between an ask and its record); how many were adopted."""
        from optuna.trial import TrialState

        orphans = [
            (t.number, t.params)
            for t in held.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number not in known
        ]
        if orphans:
            log.info("sweep %s: adopting trials %s", sweep_id, [n for n, _ in orphans])
        return self._submit(sweep_id, tenant, held, orphans) if orphans else 0

    def _submit(
        self,
        sweep_id: str,
        tenant: str,
        held: _Held,
        points: list[tuple[int, dict[str, Any]]],
    ) -> int:
        """Queue the trials ``points`` (number, the point as Optuna stores it) in one group
        of submits and link each to the sweep; a point that makes no valid spec is told
        failed to Optuna and noted on the sweep. How many were queued or noted."""
        from optuna.trial import TrialState

        requests, rows, notes = [], [], []
        for number, optuna_params in points:
            params = self._values(held.sweep, optuna_params)
            try:
                spec = trial_spec(
                    held.sweep,
                    sweep_id=sweep_id,
                    number=number,
                    params=params,
                    parent_run_id=held.run_id,
                )
            except InvalidSpec as exc:  # a point no bound showed invalid: reported, not run
                _tell_study(held.study, number, state=TrialState.FAIL)
                notes.append({"trial": number, "params": params, "message": f"invalid spec: {exc}"})
                log.warning("sweep %s: trial %s has no valid spec: %s", sweep_id, number, exc)
                continue
            job_id = trial_job_id(sweep_id, number)
            requests.append(SubmitRequest(spec, tenant, job_id=job_id, may_exist=True))
            rows.append((number, job_id, params))
        if notes:
            view = self.sweeps.get(sweep_id=sweep_id)
            self.sweeps.update(sweep_id=sweep_id, owner=self.owner, notes=[*view.notes, *notes])
        answers = (
            self.jobs.submit_many(requests, max_queued=self.max_queued, positions=False)
            if requests
            else []
        )
        queued = []
        for row, answer in zip(rows, answers, strict=True):
            if isinstance(answer, QueueFull):  # asked again at a later step, as an orphan
                held.orphans_possible = True
                continue
            if isinstance(answer, StoreError):
                raise answer
            queued.append(row)
        if queued:
            self.sweeps.add_trials(sweep_id=sweep_id, owner=self.owner, trials=queued)
        return len(queued) + len(notes)

    def _tell(
        self, sweep_id: str, held: _Held, trial: TrialView, best: dict[str, Any] | None
    ) -> None:
        from optuna.trial import TrialState

        objective = objective_of(trial, held.sweep.spec.objective.metric)
        status = trial.status.value
        if status == "succeeded" and objective is not None:
            _tell_study(held.study, trial.number, values=objective)
        elif status == "pruned":
            _tell_study(held.study, trial.number, state=TrialState.PRUNED)
        else:
            _tell_study(held.study, trial.number, state=TrialState.FAIL)
        new = None
        if (
            status == "succeeded"
            and objective is not None
            and (best is None or better(objective, float(best["objective"]), held.sweep.direction))
        ):
            new = {
                "job_id": trial.job_id,
                "trial": trial.number,
                "params": trial.params,
                "objective": objective,
                "mlflow_run_id": trial.mlflow_run_id,
            }
        seq = self.sweeps.tell(
            sweep_id=sweep_id, owner=self.owner, number=trial.number, objective=objective, best=new
        )
        if new is not None and self.tracking is not None and held.run_id is not None:
            try:
                self.tracking.best(run_id=held.run_id, step=seq, best=new)
            except Exception as exc:
                log.warning("sweep %s: best not logged to MLflow: %s", sweep_id, exc)

    def _end(self, sweep_id: str, held: _Held, view: Any, failed: int) -> None:
        trials, _ = self.sweeps.trials(sweep_id=sweep_id)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status.value] = counts.get(t.status.value, 0) + 1
        error = None
        invalid = failed - counts.get("failed", 0)
        if invalid:
            counts["failed"] = failed  # the points that made no valid spec count as failed
        how = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if view.cancel_requested:
            status = "cancelled"
        elif counts.get("succeeded", 0) == 0:
            status, error = "failed", f"no trial succeeded ({how})"
        elif failed >= held.sweep.max_failed():
            status = "failed"
            error = f"{failed} trials failed, max_failed is {held.sweep.max_failed()} ({how})"
        else:
            status = "succeeded"
        if error is not None:
            example = _first_error(trials, view.notes)
            if example:
                error += f"; {example}"
        if self.tracking is not None and held.run_id is not None:
            try:
                self.tracking.finish(
                    run_id=held.run_id,
                    status=status,
                    rows=results_table(trials, held.sweep),
                    best=self.sweeps.get(sweep_id=sweep_id).best,
                    register_as=held.sweep.spec.register_as,
                    tenant=view.tenant,
                )
            except Exception as exc:
                log.warning("sweep %s: its MLflow run not closed: %s", sweep_id, exc)
        self.sweeps.finish(sweep_id=sweep_id, owner=self.owner, status=status, error=error)
        log.info("sweep %s ended %s%s", sweep_id, status, f": {error}" if error else "")
        self._held.pop(sweep_id, None)


def _tell_study(study: Any, number: int, **outcome: Any) -> None:
    """Tell Optuna how trial ``number`` ended (once: a second tell after a crash is skipped).
    Optuna's grid sampler asks the study to stop once every point was handed out, which
    raises outside ``Study.optimize``; the trial's state is stored all the same (Optuna
    stores it in a ``finally``), so that is not an error here."""
    try:
        study.tell(number, skip_if_finished=True, **outcome)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def objective_of(trial: TrialView, metric: str) -> float | None:
    """A trial's objective: a succeeded trial's final value of the metric (its result's;
    its last epoch's when the result has none), a pruned one's last epoch's; None for the
    others or a value that is not finite."""
    value: Any = None
    if trial.status.value == "succeeded":
        value = ((trial.result or {}).get("metrics") or {}).get(metric)
    if value is None and trial.status.value in ("succeeded", "pruned"):
        value = ((trial.progress or {}).get("metrics") or {}).get(metric)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _first_error(trials: list[TrialView], notes: list[Any]) -> str | None:
    for t in trials:
        if t.status.value == "failed" and t.error:
            message = t.error.get("message") if isinstance(t.error, dict) else t.error
            return f"trial {t.number}: {str(message)[:300]}"
    for note in notes:
        if isinstance(note, dict) and "trial" in note:
            return f"trial {note['trial']}: {str(note['message'])[:300]}"
    return None


def results_table(trials: list[TrialView], sweep: Sweep) -> list[dict[str, Any]]:
    """One row per trial: number, job, status, objective and each searched value."""
    return [
        {
            "trial": t.number,
            "job_id": t.job_id,
            "status": t.status.value,
            sweep.spec.objective.metric: t.objective,
            **{d.path: t.params.get(d.path) for d in sweep.dimensions},
        }
        for t in sorted(trials, key=lambda t: t.number)
    ]
