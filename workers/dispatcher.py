"""The dispatcher: moves queued jobs onto Ray as the cluster has room, and reaps them.

It claims only as many jobs as the cluster has free CPUs, GPUs and memory for, so a waiting job
stays ``queued`` (with its place and reason visible) instead of hiding inside Ray's scheduler.
A job that fits a node but not the room free now does not hold up the smaller jobs behind it
(backfill) until it has waited ``backfill_seconds``; then the room it needs is held for it.
Each claim becomes one Ray task (``workers.task.run_attempt``) with the spec's ``num_cpus`` and
``num_gpus``, ``memory`` the job's estimated peak (``core.memory``), and no Ray-level retries:
attempts belong to the queue. Ray counts ``memory`` per node like CPUs, so jobs sharing a node
never reserve more than its memory resource. While no live node has CPUs (a head of 0 CPUs
alone, the worker nodes restarting, the local node dead) the queue waits for nodes, its head
saying so; only a job larger than every node of a cluster with such nodes is unsatisfiable. A
local Ray it started (no ``ray_address``) whose raylet or GCS server exits is replaced by a new
one, the jobs of its attempts settled at once. It renews no lease itself (the attempt does),
settles at once the job of an attempt it sees die (``JobStore.release``) and any other expired
lease (``requeue_expired``), closes the MLflow runs of attempts that died (on a thread of its
own: ``workers.run_closer``; at its start also those a stopped dispatcher left open), signals
a stop asked of a running job (a cancel, a prune) to its attempt at once (``workers.stops``),
and force-stops an attempt that has not stopped by itself within a grace period.
Several dispatchers may share one database: claims and fencing make that safe.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from core.memory import estimate, pack_estimate, size
from core.packed import pack_key, unpackable_reason
from core.spec import DatasetShape, InvalidSpec, JobSpec
from core.uploads import recorded_shape
from db.datasets import DatasetStore
from db.errors import DatasetNotFound
from db.keys import KeyStore
from db.store import JobStore
from db.views import ClaimedJob, JobView, TenantCaps
from workers.pack import run_pack
from workers.run_closer import RunCloser
from workers.stops import start_board
from workers.sweeps import SweepController
from workers.task import WorkerConfig, run_attempt
from workers.tracking import make_client

log = logging.getLogger("gradq.dispatcher")

FREED_LAG_S = 0.5  # see Dispatcher.capacity
LOST_REASON = "the worker running it was lost"  # the closed run's gradq.close_reason
NO_NODE_REASON = "waiting for a Ray node with CPUs: none is alive"
RAY_DAEMONS = ("raylet", "gcs_server")  # a local Ray without either runs nothing more
CLOSE_DRAIN_S = 5.0  # at stop, how long runs still to be closed may take (MLflow may be away)
CAPS_SECONDS = 5.0  # how long the keys' caps read are used: a changed cap applies within it
PACK_MIN = 4  # the fewest members a group of trials is split into packs of, over free CPUs


class RayDied(RuntimeError):
    """The local Ray an attempt ran on lost a daemon, and the attempt with it."""


@dataclass(frozen=True)
class DispatcherConfig:
    worker: WorkerConfig
    ray_address: str | None = None  # None: start a local Ray inside this process
    ray_num_cpus: int | None = None  # local Ray only (default: all cores)
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # How often an idle dispatcher looks for queued jobs (one indexed query): the longest a
    # job submitted to an idle service waits to be claimed. While attempts run it also wakes
    # as soon as one of them ends.
    poll_seconds: float = 0.1
    requeue_seconds: float = 2.0
    # How often the stops asked of running jobs are read (one query for all of them) and
    # signalled to their attempts (``workers.stops``); an attempt that has not stopped
    # ``stop_grace_seconds`` after its signal is killed.
    stop_check_seconds: float = 0.1
    stop_grace_seconds: float = 10.0
    unsatisfiable: Literal["fail", "wait"] = "fail"
    # The lease a claim starts with: it covers starting a Ray worker process and importing
    # torch and MLflow (seconds on a cold node), after which the attempt's own heartbeats keep
    # it at ``worker.lease_seconds``.
    start_lease_seconds: float = 90.0
    warm_workers: int = 2  # worker processes to start and warm up at connect
    max_claim: int = 16
    # With no CPU free nothing can be claimed (every job needs some): the queue's head is then
    # read this often, not at every tick, to fail (or mark) jobs no node can ever run and to
    # keep the waiting reason current.
    full_scan_seconds: float = 1.0
    # Backfill: jobs behind a queued job that fits a node but not the room free now start in
    # the room it leaves; once it has waited this long, the room it needs is held for it
    # (jobs behind it then use only what it does not need), so it starts when that much is
    # free. Bounds how long smaller jobs may take room a large job needs; 0: held at once.
    backfill_seconds: float = 30.0
    # The most jobs a tenant may have running at once, unless its API keys set a cap
    # (``KeyStore.tenant_caps``, read every ``CAPS_SECONDS``); None: no cap. A tenant at its
    # cap waits, saying so, and the jobs of other tenants behind it run. The running jobs are
    # counted in the database at each launch, so dispatchers sharing it each keep the cap; two
    # launching in the same instant may together pass it by what they claim at once.
    max_running_per_tenant: int | None = None
    # Packs (``workers.pack``): a sweep's trials of one shape (``core.packed.pack_key``) queued
    # together train as one Ray task of up to ``pack_size`` members (``pack_size_gpu`` on a
    # GPU), as many as fit the largest node's memory (``core.memory.pack_estimate``) and
    # the tenant's cap. A group not yet full waits for the trials its sweep is still queueing
    # (a few at a time) until it has not grown for ``pack_quiet_seconds``, at most
    # ``pack_wait_seconds`` since it was first seen. ``pack_size`` 1: no packs.
    pack_size: int = 32
    pack_size_gpu: int = 512
    pack_quiet_seconds: float = 0.25
    pack_wait_seconds: float = 1.0
    # At its start the dispatcher closes the runs of jobs lost this far back (those it, or
    # another dispatcher, could not close before stopping: MLflow away, or a crash).
    lost_runs_lookback_hours: float = 24.0


@dataclass(frozen=True)
class Demand:
    """Resources on Ray: CPUs, GPUs and memory (bytes). An attempt's are the spec's
    ``resources`` and ``core.memory``'s estimate of the job's peak memory."""

    cpus: float
    gpus: float
    memory: float

    def within(self, room: Demand) -> bool:
        return all(a <= b + 1e-9 for a, b in zip(astuple(self), astuple(room), strict=True))

    def __add__(self, other: Demand) -> Demand:
        return Demand(*map(operator.add, astuple(self), astuple(other)))

    def __sub__(self, other: Demand) -> Demand:
        return Demand(*map(operator.sub, astuple(self), astuple(other)))

    def share(self, parts: int) -> Demand:
        """One of ``parts`` equal shares (a pack member's part of the pack's demand)."""
        return Demand(*(v / parts for v in astuple(self)))

    def least(self, other: Demand) -> Demand:
        """Each kind's smaller amount."""
        return Demand(*map(min, astuple(self), astuple(other)))

    def most(self, other: Demand) -> Demand:
        """Each kind's larger amount."""
        return Demand(*map(max, astuple(self), astuple(other)))

    def __str__(self) -> str:
        return f"{self.cpus:g} CPU / {self.gpus:g} GPU / {size(self.memory)} memory"


NOTHING = Demand(0.0, 0.0, 0.0)


def demand(spec: dict[str, Any], datasets: DatasetStore | None = None) -> Demand:
    """What an attempt of the job with this spec (as stored) reserves. A job on an upload
    is estimated on the upload's recorded shape (its rows, features and classes) when
    ``datasets`` holds it with one, as at its submission; otherwise on the table
    ``core.memory`` assumes for files."""
    r = spec.get("resources") or {}
    try:
        job = JobSpec.model_validate(spec)
        memory = estimate(job, _upload_shape(job, datasets)).total
    except (ValidationError, InvalidSpec):  # its attempt fails it as invalid
        memory = 0
    return Demand(float(r.get("cpus", 1.0)), float(r.get("gpus", 0.0)), memory)


def _upload_shape(job: JobSpec, datasets: DatasetStore | None) -> DatasetShape | None:
    ds = job.dataset
    if datasets is None or ds.name != "upload" or ds.id is None:
        return None
    try:
        found = datasets.get(dataset_id=ds.id)
    except DatasetNotFound:  # its attempt fails it, naming dataset.id
        return None
    if ds.target not in found.columns:
        return None
    return recorded_shape(ds, columns=found.columns, rows=found.rows, profile=found.profile)


@dataclass
class Attempt:
    job: ClaimedJob
    ref: Any  # ray.ObjectRef
    needs: Demand
    launched: float
    stop_seen: float | None = None  # when its stop was signalled (``time.monotonic``)
    force_stopped: bool = False
    pack: int = 1  # the members of its pack (its Ray task): 1 alone


def warm_up() -> str:
    """Runs in a Ray worker: importing the attempt's code is most of a cold start."""
    import mlflow.models
    import mlflow.pytorch

    import workers.task  # torch, MLflow's client and core come with it
    import workers.tracking.artifacts
    import workers.tracking.plot

    workers.tracking.artifacts.import_model_logging()  # torch.export, for the model

    workers.tracking.plot.learning_curve_png([])  # loads Pillow's font
    return f"warm: {workers.task.__name__}, {mlflow.pytorch.__name__}, {mlflow.models.__name__}"


def death(exc: BaseException) -> str:
    """How an attempt died, for its job's event: the exception's type and first line."""
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Dispatcher:
    def __init__(
        self,
        config: DispatcherConfig,
        store: JobStore,
        keys: KeyStore | None = None,
        datasets: DatasetStore | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.keys = keys  # the API keys whose caps apply; None: the default caps every tenant
        self.datasets = datasets  # the uploads' records, for their shapes (``demand``)
        self.inflight: dict[str, Attempt] = {}
        self._last_scan = float("-inf")  # when launch() last read the queue's head
        self._remote: Any = None
        self._remote_pack: Any = None
        self._warming: list[Any] = []
        self._last_requeue = 0.0
        self._last_stop_check = 0.0
        self.board: Any = None  # the stop board (``workers.stops``) on the Ray it started with
        # (when, resources) of attempts reaped lately: Ray's view of the free resources
        # lags the end of a task by ~0.1 s, so they are counted free meanwhile.
        self._freed: list[tuple[float, Demand]] = []
        self._demands: dict[str, Demand] = {}  # of queued jobs seen, by id (specs never change)
        self._packs: dict[str, str | None] = {}  # queued jobs' pack keys (None: alone), by id
        self._alone: dict[str, str] = {}  # why a trial that asked for a pack cannot have one
        self._specs: dict[str, JobSpec] = {}  # queued packable trials' parsed specs, by id
        # each group of packable trials seen queued: (its size, when first seen, last grown)
        self._growing: dict[str, tuple[int, float, float]] = {}
        # since when (``clock``) each queued job seen waiting for room has waited: backfill
        self._waiting: dict[str, float] = {}
        self.clock: Callable[[], float] = time.monotonic  # of backfill and caps (tests set it)
        self._caps: dict[str, int | None] = {}  # tenants' caps of running jobs, read at…
        self._caps_read = float("-inf")  # …this time (``clock``)
        self._own_node: Any = None  # the local Ray node this dispatcher started, if any
        self._ray_lost: str | None = None  # why that local Ray is being replaced, meanwhile
        # closes the runs of attempts that died, on its own thread (MLflow may be away)
        self.closer = RunCloser(config.worker.tracking_uri)
        # drives sweeps (``workers.sweeps``) on a thread of its own while ``run`` runs;
        # None: none here
        self.sweeps: SweepController | None = None

    # --- Ray ---------------------------------------------------------------------------------

    def connect(self) -> None:
        self._start_ray()
        # Create the tracking store's schema here, once: attempts starting side by side on a
        # fresh SQLite store would otherwise race to migrate it.
        make_client(self.config.worker.tracking_uri).search_experiments(max_results=1)

    def _start_ray(self) -> None:
        """Join Ray (``ray_address``) or start a local one, unless this process is already
        connected; a local Ray started here is watched by ``local_ray_down``."""
        import ray

        if not ray.is_initialized():
            if self.config.ray_address:
                ray.init(address=self.config.ray_address, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=self.config.ray_num_cpus, include_dashboard=False, log_to_driver=False
                )
                self._own_node = ray._private.worker._global_node
        self._remote = ray.remote(max_retries=0, retry_exceptions=False)(run_attempt)
        self._remote_pack = ray.remote(max_retries=0, retry_exceptions=False)(run_pack)
        self.board = start_board()
        if self.config.warm_workers:
            # Start worker processes now and import torch, MLflow and the engine in them, so
            # the first job does not wait for it (Ray keeps idle workers for reuse).
            warm = ray.remote(num_cpus=0, max_retries=0)(warm_up)
            self._warming = [warm.remote() for _ in range(self.config.warm_workers)]

    def local_ray_down(self) -> str | None:
        """Why the local Ray this dispatcher started cannot run jobs now (its raylet or GCS
        server has exited: the dispatcher is replacing it); None when it runs, or is not ours."""
        why = self._ray_lost or self._dead_daemons()
        return None if why is None else f"the local Ray is restarting: {why}"

    def _dead_daemons(self) -> str | None:
        node = self._own_node
        if node is None:
            return None
        dead = sorted({kind for kind, _ in node.dead_processes() if kind in RAY_DAEMONS})
        return f"its {' and '.join(dead)} exited" if dead else None

    def restart_ray(self, why: str) -> None:
        """Replace a local Ray that lost a daemon. The attempts on it died with it: each job
        is settled at once (``JobStore.release``: requeued, or failed "lost" at its last
        attempt), then a new local Ray starts; until it has, ``local_ray_down`` says why."""
        import ray

        self._ray_lost = why
        log.warning("the local Ray is restarting: %s", why)
        for job_id, attempt in list(self.inflight.items()):
            del self.inflight[job_id]
            self._settle_dead(job_id, attempt.job.attempt, RayDied(why))
        self._freed.clear()
        ray.shutdown()
        self._own_node = None
        # ray.init on the main thread (``gradq dispatcher``) sets its own SIGTERM handler: the
        # process's stays
        handler = signal.getsignal(signal.SIGTERM)
        self._start_ray()
        if threading.current_thread() is threading.main_thread() and handler is not None:
            signal.signal(signal.SIGTERM, handler)
        self._ray_lost = None
        log.info("the local Ray was restarted")

    def capacity(self) -> tuple[Demand, Demand]:
        """(free resources, the largest node's resources), each kind on its own.

        Free is what Ray reports available, plus what attempts of ours that ended in the last
        ``FREED_LAG_S`` held (Ray reports a task's resources free ~0.1 s after its result is
        ready: without this, the next job would wait for the next tick), and never more than
        the cluster's total less what our running attempts hold."""
        import ray

        def of(resources: dict[str, float]) -> Demand:
            return Demand(*(float(resources.get(k, 0.0)) for k in ("CPU", "GPU", "memory")))

        now = time.monotonic()
        self._freed = [f for f in self._freed if now - f[0] < FREED_LAG_S]
        ours = sum((a.needs for a in self.inflight.values()), NOTHING)
        freed = sum((f[1] for f in self._freed), NOTHING)
        free = (of(ray.available_resources()) + freed).least(of(ray.cluster_resources()) - ours)
        nodes = [of(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
        return free, functools.reduce(Demand.most, nodes, NOTHING)

    # --- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set; a failing tick (database away) is logged and retried."""
        if self._remote is None:
            self.connect()
        self.close_lost_runs()
        sweeps = None
        if self.sweeps is not None:
            # on a thread of its own: Optuna's asks and tells never hold up a launch
            sweeps = threading.Thread(
                target=self.sweeps.run, args=(stop,), name="gradq-sweeps", daemon=True
            )
            sweeps.start()
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:
                    log.exception("dispatcher tick failed; retrying")
                    stop.wait(self.config.poll_seconds)
                    continue
                self.idle(stop)
        finally:
            if sweeps is not None:
                sweeps.join(timeout=CLOSE_DRAIN_S)
            self.closer.stop(drain_seconds=CLOSE_DRAIN_S)

    def idle(self, stop: threading.Event) -> None:
        """Wait for the next tick: ``poll_seconds``, cut short when an attempt of ours ends,
        so that the resources it frees go to the next queued job at once (short jobs would
        otherwise wait half a poll each)."""
        if not self.inflight:
            stop.wait(self.config.poll_seconds)
            return
        import ray

        refs = list({id(a.ref): a.ref for a in self.inflight.values()}.values())
        ray.wait(refs, num_returns=1, timeout=self.config.poll_seconds)

    def tick(self) -> None:
        lost = self._ray_lost or self._dead_daemons()
        if lost is not None:  # also a restart that raised: it is tried again
            self.restart_ray(lost)
        self.reap()
        now = time.monotonic()
        if now - self._last_requeue >= self.config.requeue_seconds:
            self._last_requeue = now
            self.settle_expired()
        if now - self._last_stop_check >= self.config.stop_check_seconds:
            self._last_stop_check = now
            self.signal_stops()
        self.launch()

    def reap(self) -> int:
        """Collect finished attempts. One that died (its task raised, its worker process or
        node died, or it was killed after a cancel) has its job settled at once
        (``JobStore.release``): requeued, failed "lost" at its last attempt, or cancelled,
        with an event naming the death, instead of a lease later; a pack that died so
        settles each of its members' jobs (those that had ended are left as they are). When
        the database is away the lease settles it instead. Returns how many attempts ended."""
        import ray

        if not self.inflight:
            return 0
        refs: dict[Any, list[str]] = {}
        for job_id, a in self.inflight.items():
            refs.setdefault(a.ref, []).append(job_id)
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        ended = 0
        for ref in done:
            try:
                outcome, died = ray.get(ref), None
            except Exception as exc:
                outcome, died = None, exc
            for job_id in refs[ref]:
                attempt = self.inflight.pop(job_id)
                ended += 1
                self._freed.append((time.monotonic(), attempt.needs))
                self._tell_board("forget", job_id, attempt.job.attempt)
                if died is not None:
                    self._settle_dead(job_id, attempt.job.attempt, died)
            if died is None:
                log.info("attempts of %s ended: %s", refs[ref], outcome)
        return ended

    def _settle_dead(self, job_id: str, attempt: int, exc: Exception) -> None:
        """Settle the job of an attempt whose task died; an attempt that had ended before
        (a pack's member that left it, then the pack died) is left as it is, quietly."""
        why = death(exc)
        try:
            status = self.store.release(job_id=job_id, attempt=attempt, why=why)
        except Exception as error:  # the database is away: the lease will settle it
            log.warning("job %s attempt %s died (%s); could not settle it now: %s",
                        job_id, attempt, why, error)  # fmt: skip
            return
        if status is None:
            log.info("job %s attempt %s: its task died (%s) after it ended", job_id, attempt, why)
            return
        log.warning("job %s attempt %s died (%s), now %s", job_id, attempt, why, status.value)
        self._close_if_ended(job_id, status.value)

    def settle_expired(self) -> None:
        """Expired leases: back to queued, or failed ("lost") / cancelled; their runs closed."""
        for job_id, status in self.store.requeue_expired():
            log.info("job %s: lease expired, now %s", job_id, status.value)
            self._close_if_ended(job_id, status.value)

    def _close_if_ended(self, job_id: str, status: str) -> None:
        """The MLflow run of a job its lost attempt ended (failed or cancelled) is closed by
        the closer: no attempt of it is left to close it."""
        if status in ("failed", "cancelled"):
            run_id = self.store.get(job_id=job_id).mlflow_run_id
            if run_id:
                self.closer.submit(job_id=job_id, run_id=run_id, status=status, reason=LOST_REASON)

    def close_lost_runs(self) -> None:
        """Hand the runs of jobs lost lately to the closer (``JobStore.lost_runs``): a run
        already closed is left as it is, so only those a stop or a crash left open change."""
        since = datetime.now(UTC) - timedelta(hours=self.config.lost_runs_lookback_hours)
        try:
            lost = self.store.lost_runs(since=since)
        except Exception as exc:  # the database is away: the loop's ticks will say so
            log.warning("could not list the runs of lost jobs: %s", exc)
            return
        for job_id, run_id, status in lost:
            self.closer.submit(
                job_id=job_id, run_id=run_id, status=status.value, reason=LOST_REASON
            )

    def signal_stops(self) -> None:
        """Signal the stops asked of running jobs to their attempts of ours: one query for
        all of them (``JobStore.stop_requests``), then a push to the stop board for each new
        one (``workers.stops``); the attempt stops by itself between two steps. One still
        running ``stop_grace_seconds`` later (stuck in a long step) is killed; ``reap`` then
        settles it as cancelled. A pack's member is not: killing its Ray task would stop the
        whole pack, which asks each member's stop at every step."""
        import ray

        if not self.inflight:
            return
        now = time.monotonic()
        for request in self.store.stop_requests(owner=self.config.owner):
            attempt = self.inflight.get(request.job_id)
            if attempt is None or attempt.job.attempt != request.attempt:
                continue
            if attempt.stop_seen is None:
                attempt.stop_seen = now
                self._tell_board("stop", request.job_id, request.attempt, request.reason.value)
                log.info("job %s: stop (%s) signalled", request.job_id, request.reason.value)
            elif (
                not attempt.force_stopped
                and attempt.pack == 1  # a pack asks its members' stops at every step
                and now - attempt.stop_seen > self.config.stop_grace_seconds
            ):
                log.warning(
                    "job %s: still running %.0fs after its stop (%s), killing it",
                    request.job_id,
                    now - attempt.stop_seen,
                    request.reason.value,
                )
                ray.cancel(attempt.ref, force=True)
                attempt.force_stopped = True

    def _tell_board(self, method: str, *args: Any) -> None:
        """Call the stop board without waiting for it; a board that cannot be reached is
        logged and skipped (the attempts' heartbeats still carry their stops)."""
        try:
            getattr(self.board, method).remote(*args)
        except Exception as exc:
            log.warning("the stop board could not be told to %s %s: %s", method, args, exc)

    def demand(self, job_id: str, spec: dict[str, Any]) -> Demand:
        """``demand(spec)``, worked out once per queued job (a spec never changes)."""
        if job_id not in self._demands:
            if len(self._demands) >= 4 * self.config.max_claim + 1024:
                self._demands.clear()  # ids of jobs since claimed or cancelled elsewhere
            self._demands[job_id] = demand(spec, self.datasets)
        return self._demands[job_id]

    def launch(self) -> None:
        """Claim what fits in the free resources, in claim order, and start each on Ray: a job
        alone, or a pack of a sweep's compatible trials (``units``).

        A job (or pack) that fits a node but not the room free now waits, saying so, and the
        jobs behind it that fit start in the room left (backfill). Once it has waited
        ``backfill_seconds`` the room it needs is held for it: each kind it needs is taken
        from what jobs behind it may use, so none of them can delay it, and it starts as soon
        as that room is free."""
        free, largest = self.capacity()
        now = time.monotonic()
        if free.cpus <= 1e-9 and now - self._last_scan < self.config.full_scan_seconds:
            return  # under load: a tick per finished attempt read 16 jobs here for nothing
        self._last_scan = now
        heads = self.store.next_queued(limit=max(self.config.max_claim, self.config.pack_size))
        if not heads:
            return
        if largest.cpus <= 1e-9:
            # No live node has CPUs (a head of 0 CPUs alone, the workers restarting, the local
            # node dead): the cluster is short of nodes for now, so no job is judged against it.
            self._set_reason(heads[0], NO_NODE_REASON)
            return
        seen = {job.id for job in heads}
        self._waiting = {k: v for k, v in self._waiting.items() if k in seen}
        caps, running = self._running_caps({job.tenant for job in heads})
        fitting: list[list[JobView]] = []
        blocked = 0  # units seen waiting for room in this scan
        for unit in self.units(heads, free.cpus):
            job = unit[0]
            cap = caps.get(job.tenant)
            if cap is not None and running[job.tenant] >= cap:
                self._set_reason(job, f"tenant {job.tenant} is at its cap of {cap} running jobs")
                continue  # other tenants' jobs behind it run
            if cap is not None:
                unit = unit[: cap - running[job.tenant]]
            unit, needs = self._fitted(unit, largest)
            if not needs.within(largest):
                self.unsatisfiable(job, needs, largest)
                continue  # it can never run here: it does not hold up the jobs behind it
            if not needs.within(free):
                free = self._wait_for_room(job, needs, free, first=not blocked)
                blocked += 1
                continue
            self._waiting.pop(job.id, None)
            free -= needs
            fitting.append(unit)
            if cap is not None:
                running[job.tenant] += len(unit)
        if not fitting:
            return
        # a sweep's trial that asked to be packed but cannot be trains alone, its claim
        # event saying why (``core.packed.unpackable_reason``)
        groups: dict[str | None, list[str]] = {}
        for unit in fitting:
            for job in unit:
                groups.setdefault(self._alone.get(job.id), []).append(job.id)
        lease = max(self.config.start_lease_seconds, self.config.worker.lease_seconds)
        claimed_jobs = []
        for why, ids in groups.items():
            note = {} if why is None else {"note": f"trains alone, not in a pack: {why}"}
            claimed_jobs += self.store.claim(
                owner=self.config.owner, limit=len(ids), ids=ids, lease_seconds=lease, **note
            )
        claimed = {c.id: c for c in claimed_jobs}
        for unit in fitting:
            members = [claimed[job.id] for job in unit if job.id in claimed]
            if members:
                self._start(members)

    def units(self, heads: list[JobView], cpus: float = 1.0) -> list[list[JobView]]:
        """The queue's head as units to start, in claim order of their first job: each job
        alone, but a sweep's packable trials of one ``pack_key`` (``TrialSpec.pack``), which
        form packs, each pack's members in trial-number order (the order in which they report
        at an ASHA rung, so a seeded sweep's decisions within a pack do not depend on its id).

        On CPUs a group of such trials is spread over the ``cpus`` free now (a pack is one
        task on one CPU): as many packs as CPUs, of at least ``PACK_MIN`` members each, at
        most ``pack_size`` (on a GPU: packs of up to ``pack_size_gpu``). A group not yet full
        waits for the trials its sweep is still queueing: until it has not grown for
        ``pack_quiet_seconds``, at most ``pack_wait_seconds`` since it was first seen."""
        if self.config.pack_size <= 1:
            return [[job] for job in heads]
        now = self.clock()
        slots: list[tuple[int, list[JobView]]] = []  # (first job's place, the unit)
        groups: dict[str, list[tuple[int, JobView]]] = {}
        cap: dict[str, tuple[int, bool]] = {}  # key → (the most per pack, on a GPU)
        for place, job in enumerate(heads):
            key, most, gpu = self._pack_of(job)
            if key is None:
                slots.append((place, [job]))
                continue
            groups.setdefault(key, []).append((place, job))
            cap[key] = (most, gpu)
        waiting: set[str] = set()
        for key, members in groups.items():
            count, (most, gpu) = len(members), cap[key]
            before = self._growing.get(key)
            if before is None or before[0] != count:  # new, or grown: (size, first, last)
                self._growing[key] = (count, now if before is None else before[1], now)
            _, first, grown = self._growing[key]
            filling = now - grown < self.config.pack_quiet_seconds
            if count < most and filling and now - first < self.config.pack_wait_seconds:
                waiting.add(key)
                continue
            size = most if gpu else min(most, max(PACK_MIN, -(-count // max(1, int(cpus)))))
            members.sort(key=lambda pj: _trial_number(pj[1]))
            for a in range(0, count, size):
                part = members[a : a + size]
                slots.append((min(p for p, _ in part), [j for _, j in part]))
        self._growing = {k: v for k, v in self._growing.items() if k in groups}
        return [unit for _, unit in sorted(slots, key=lambda s: s[0])]

    def _pack_of(self, job: JobView) -> tuple[str | None, int, bool]:
        """The job's pack key (its sweep and ``pack_key``; None: it trains alone), the most
        members of its packs and whether it runs on a GPU; worked out once per queued job."""
        if job.id not in self._packs:
            if len(self._packs) >= 4 * self.config.max_claim + 4096:
                self._packs.clear()
                self._alone.clear()
                self._specs.clear()
            key = None
            try:
                spec = JobSpec.model_validate(job.spec)
                if spec.trial is not None and spec.trial.pack:
                    why = unpackable_reason(spec)
                    if why is None:
                        key = f"{job.tenant}/{spec.trial.sweep_id}/{pack_key(spec)}"
                        self._specs[job.id] = spec  # for the pack's memory, at each tick
                    else:
                        self._alone[job.id] = why
            except (ValidationError, InvalidSpec, ValueError):  # its attempt fails it
                key = None
            self._packs[job.id] = key
        key = self._packs[job.id]
        if key is None:
            return None, 1, False
        gpu = float((job.spec.get("resources") or {}).get("gpus", 0.0)) > 0
        return key, self.config.pack_size_gpu if gpu else self.config.pack_size, gpu

    def _fitted(self, unit: list[JobView], largest: Demand) -> tuple[list[JobView], Demand]:
        """The unit as large as fits the largest node (a pack halved until its memory does;
        the members left out stay queued for the next tick) and its demand."""
        needs = self.unit_demand(unit)
        while len(unit) > 1 and not needs.within(largest):
            unit = unit[: len(unit) // 2]
            needs = self.unit_demand(unit)
        return unit, needs

    def unit_demand(self, unit: Sequence[JobView | ClaimedJob]) -> Demand:
        """A job's ``demand``; a pack's: its members' most CPUs and GPUs (one task) and the
        memory of ``core.memory.pack_estimate``."""
        if len(unit) == 1:
            return self.demand(unit[0].id, unit[0].spec)
        each = [self.demand(job.id, job.spec) for job in unit]
        specs = [self._specs.get(job.id) or JobSpec.model_validate(job.spec) for job in unit]
        return Demand(
            max(d.cpus for d in each), max(d.gpus for d in each), float(pack_estimate(specs))
        )

    def _start(self, members: list[ClaimedJob]) -> None:
        """Start the claimed jobs on Ray: one alone (``run_attempt``), or several as a pack
        (``run_pack``), each member holding an equal share of the pack's demand."""
        first = members[0]
        needs = self.unit_demand(members)
        for c in members:
            self._demands.pop(c.id, None)  # no longer queued
            self._packs.pop(c.id, None)
            self._alone.pop(c.id, None)
            self._specs.pop(c.id, None)
        task, args = (self._remote, first) if len(members) == 1 else (self._remote_pack, members)
        name = f"gradq-{first.id[:8]}-a{first.attempt}"
        if len(members) > 1:
            name = f"gradq-pack-{first.id[:8]}-{len(members)}"
        self._reuse_freed(needs)
        ref = task.options(
            num_cpus=needs.cpus, num_gpus=needs.gpus, memory=int(needs.memory), name=name
        ).remote(self.config.worker, args, self.board)
        share = needs.share(len(members))
        for c in members:
            self.inflight[c.id] = Attempt(c, ref, share, time.monotonic(), pack=len(members))
        if len(members) == 1:
            log.info("job %s attempt %s launched (%s)", first.id, first.attempt, needs)
        else:
            log.info("pack of %s launched (%s): %s", len(members), needs,
                     [(c.id, c.attempt) for c in members])  # fmt: skip

    def _running_caps(self, tenants: set[str]) -> tuple[dict[str, int | None], dict[str, int]]:
        """(each tenant's cap of running jobs, None for none; the running jobs of those with
        one). No query without keys and without a default cap."""
        caps = self._tenant_caps(tenants)
        capped = [t for t, cap in caps.items() if cap is not None]
        return caps, self.store.running_counts(tenants=capped) if capped else {}

    def _tenant_caps(self, tenants: set[str]) -> dict[str, int | None]:
        """Each tenant's cap of running jobs: its keys' (``KeyStore.tenant_caps``), read at
        most every ``CAPS_SECONDS``, else the configured default."""
        default = self.config.max_running_per_tenant
        if self.keys is None:
            return dict.fromkeys(tenants, default)
        now = self.clock()
        if now - self._caps_read >= CAPS_SECONDS:
            self._caps, self._caps_read = {}, now
        missing = tenants - self._caps.keys()
        if missing:
            read = self.keys.tenant_caps(tenants=missing, default=TenantCaps(max_running=default))
            self._caps.update({t: c.max_running for t, c in read.items()})
        return {t: self._caps[t] for t in tenants}

    def _wait_for_room(self, job: JobView, needs: Demand, free: Demand, *, first: bool) -> Demand:
        """A job that fits a node but not ``free`` waits, its reason saying so (the ``first``
        such job of a scan also says what is free: the others' reasons do not change with
        every job that starts or ends, so they are written once); returns the room the jobs
        behind it may use: all of ``free`` while it is within its backfill window, else
        ``free`` less what it needs (each kind at least 0)."""
        now = self.clock()
        since = self._waiting.setdefault(job.id, now)
        reason = f"waiting for resources: needs {needs}"
        if first:
            reason += f", {free.most(NOTHING)} free"
        window = self.config.backfill_seconds
        if now - since < window:
            self._set_reason(job, reason)
            return free
        held = f"; held for it: it waited past the {window:g} s backfill window"
        self._set_reason(job, reason + held)
        return (free - needs).most(NOTHING)

    def _reuse_freed(self, needs: Demand) -> None:
        """A launch takes what it needs from the recently freed resources first, so that they
        are not counted free again while Ray's view has not caught up."""
        kept = []
        for when, freed in self._freed:
            take = freed.least(needs)
            needs, left = needs - take, freed - take
            if any(v > 1e-9 for v in astuple(left)):
                kept.append((when, left))
        self._freed = kept

    def unsatisfiable(self, job: JobView, needs: Demand, largest: Demand) -> None:
        """A job larger than every node of a cluster that has nodes with CPUs: failed, or
        (``unsatisfiable="wait"``) left queued with the reason."""
        reason = f"no node of the cluster can run it: needs {needs}, the largest node has {largest}"
        if self.config.unsatisfiable == "fail":
            self.store.fail_queued(job_id=job.id, reason=reason)
            self._demands.pop(job.id, None)
        else:
            self._set_reason(job, reason)

    def _set_reason(self, job: JobView, reason: str) -> None:
        """Say why a queued job waits: a write only when the reason changes."""
        if job.pending_reason != reason:
            self.store.set_pending_reason(job_id=job.id, reason=reason)


def _trial_number(job: JobView) -> int:
    """A sweep's trial's number (a job of no sweep: 0)."""
    return int(((job.spec or {}).get("trial") or {}).get("number") or 0)


def stop_ray() -> None:
    """Shut down this process's connection to Ray (the local Ray with it), as ``gradq serve``
    and ``gradq dispatcher`` do on their way out."""
    import ray

    ray.shutdown()


def run_in_thread(dispatcher: Dispatcher) -> tuple[threading.Thread, threading.Event]:
    """Start the dispatcher loop in a daemon thread (the embedded ``gradq serve``)."""
    stop = threading.Event()
    dispatcher.connect()
    thread = threading.Thread(
        target=dispatcher.run, args=(stop,), name="gradq-dispatcher", daemon=True
    )
    thread.start()
    return thread, stop
