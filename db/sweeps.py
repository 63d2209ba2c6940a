"""The durable record of sweeps: their rows, their trials, ASHA's rung reports, and the
lease by which one controller at a time drives a sweep.

A trial is an ordinary job (``db.store.JobStore`` submits, claims, fences and ends it); this
store keeps what makes it a trial: the ``trials`` row linking the sweep, the trial's number
and parameters to its job, and the objective once it ended. The controller
(``workers.sweeps``) holds a sweep by a lease (owner, expiry), renewed as it works, so with
several dispatchers one drives each sweep, and a controller that stopped is replaced once
its lease ran out. Every write of a controller is fenced by its lease (``owner``).

Rung reports (:meth:`SweepStore.report`) are written by the trial's running attempt (fenced
by its attempt, like every write of an attempt): the decision is taken from the reports of
the rung stored before it, under a lock on the sweep's row, so the stored decisions can be
recomputed from the stored reports (:func:`core.sweep.promotable`).
"""

from __future__ import annotations

import base64
import builtins
import json
import math
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.sweep import Mode, promotable
from db.errors import InvalidCursor, StaleAttempt, StoreError
from db.filters import tag_terms
from db.models import JOBS, REPORTS, SWEEPS, TRIALS, utcnow
from db.session import read_tx, write_tx
from db.states import TERMINAL, JobStatus
from db.webhooks import tell_sweep

SWEEP_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
TRIAL_NAMESPACE = uuid.UUID("6f1d3c1e-6a55-4c55-9a8e-2f1b8c0f5a11")


class SweepNotFound(StoreError):
    """No sweep with this id (or not visible to this tenant)."""

    def __init__(self, sweep_id: str) -> None:
        self.sweep_id = sweep_id
        super().__init__(f"sweep {sweep_id} not found")


class SweepLeaseLost(StoreError):
    """The controller no longer holds the sweep (its lease ran out and another took it)."""


def trial_job_id(sweep_id: str, number: int) -> str:
    """The id of trial ``number``'s job: the same whoever submits it, so a trial submitted
    again after a crash (an adoption) finds its job instead of making a second one."""
    return str(uuid.uuid5(TRIAL_NAMESPACE, f"{sweep_id}/{number}"))


@dataclass(frozen=True)
class SweepView:
    id: str
    tenant: str
    name: str
    spec: dict[str, Any]
    status: str
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    best: dict[str, Any] | None
    error: str | None
    notes: list[str]
    mlflow_run_id: str | None
    mlflow_experiment_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> SweepView:
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            name=row["name"],
            spec=row["spec"],
            status=row["status"],
            cancel_requested=bool(row["cancel_requested"]),
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            best=row["best"],
            error=row["error"],
            notes=list(row["notes"] or []),
            mlflow_run_id=row["mlflow_run_id"],
            mlflow_experiment_id=row["mlflow_experiment_id"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class TrialView:
    """A trial with what its job says now."""

    number: int
    job_id: str
    params: dict[str, Any]
    objective: float | None
    told: bool
    ended_seq: int | None
    status: JobStatus
    result: dict[str, Any] | None
    error: Any
    progress: dict[str, Any] | None
    mlflow_run_id: str | None
    finished_at: datetime | None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class TrialState:
    """Where a trial is, without its job's documents (what a controller's step reads)."""

    number: int
    job_id: str
    told: bool
    status: JobStatus

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


def _scope(sweep_id: str, tenant: str | None) -> list[Any]:
    where = [SWEEPS.c.id == sweep_id]
    if tenant is not None:
        where.append(SWEEPS.c.tenant == tenant)
    return where


class SweepStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # --- the API's side --------------------------------------------------------------------

    def create(self, *, spec: dict[str, Any], name: str, tenant: str = "default") -> SweepView:
        """A new sweep, ``queued`` until a controller takes it."""
        now = utcnow()
        row = dict(
            id=str(uuid.uuid4()),
            tenant=tenant,
            name=name,
            spec=spec,
            status="queued",
            cancel_requested=False,
            notes=[],
            created_at=now,
            updated_at=now,
        )
        with write_tx(self._engine) as conn:
            conn.execute(insert(SWEEPS), [row])
            return self._get(conn, str(row["id"]), None)

    def get(self, *, sweep_id: str, tenant: str | None = None) -> SweepView:
        with read_tx(self._engine) as conn:
            return self._get(conn, sweep_id, tenant)

    @staticmethod
    def _get(conn: Any, sweep_id: str, tenant: str | None) -> SweepView:
        row = conn.execute(select(SWEEPS).where(*_scope(sweep_id, tenant))).mappings().first()
        if row is None:
            raise SweepNotFound(sweep_id)
        return SweepView.from_row(row)

    def list(
        self,
        *,
        tenant: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        tags: Sequence[tuple[str, str]] = (),
    ) -> tuple[builtins.list[SweepView], str | None]:
        """One page of sweeps, newest first, and the next page's cursor (None on the last);
        only those with every tag of ``tags`` (its spec's)."""
        query = select(SWEEPS).order_by(SWEEPS.c.created_at.desc(), SWEEPS.c.id.desc())
        if tenant is not None:
            query = query.where(SWEEPS.c.tenant == tenant)
        if status is not None:
            query = query.where(SWEEPS.c.status == status)
        query = query.where(*tag_terms(SWEEPS, tags))
        if cursor is not None:
            try:
                raw_at, last_id = _decode(cursor)
                at = datetime.fromisoformat(raw_at)
            except (ValueError, TypeError) as exc:
                raise InvalidCursor(cursor) from exc
            query = query.where(
                or_(
                    SWEEPS.c.created_at < at,
                    and_(SWEEPS.c.created_at == at, SWEEPS.c.id < str(last_id)),
                )
            )
        with read_tx(self._engine) as conn:
            rows = conn.execute(query.limit(limit + 1)).mappings().all()
        page = [SweepView.from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        last = page[-1] if page else None
        return page, (
            _encode([last.created_at.astimezone(UTC).isoformat(), last.id])
            if more and last
            else None
        )

    def trial_states(self, *, sweep_id: str) -> builtins.list[TrialState]:
        """The sweep's trials by number, each with its job's status and whether it was told:
        one narrow read (no params, results or progress documents)."""
        t, j = TRIALS.c, JOBS.c
        query = (
            select(t.number, t.job_id, t.told, j.status)
            .join(JOBS, j.id == t.job_id)
            .where(t.sweep_id == sweep_id)
            .order_by(t.number)
        )
        with read_tx(self._engine) as conn:
            self._get(conn, sweep_id, None)
            rows = conn.execute(query).all()
        return [TrialState(n, job_id, bool(told), JobStatus(st)) for n, job_id, told, st in rows]

    def trials(
        self,
        *,
        sweep_id: str,
        tenant: str | None = None,
        sort: str = "trial",
        mode: Mode = "max",
        limit: int | None = None,
        cursor: str | None = None,
        numbers: Collection[int] | None = None,
    ) -> tuple[builtins.list[TrialView], str | None]:
        """The sweep's trials with their jobs' status, by number or (``sort="objective"``)
        best first by ``mode`` (trials without an objective last); ``cursor``: the page's
        offset, from ``next_cursor``; ``numbers``: only those trials."""
        offset = 0
        if cursor is not None:
            try:
                offset = int(_decode(cursor)[0])
            except (ValueError, TypeError, IndexError) as exc:
                raise InvalidCursor(cursor) from exc
            if offset < 0:
                raise InvalidCursor(cursor)
        t, j = TRIALS.c, JOBS.c
        query = select(
            t.number, t.job_id, t.params, t.objective, t.told, t.ended_seq, j.status,
            j.result, j.error, j.progress, j.mlflow_run_id, j.finished_at,
        ).join(JOBS, j.id == t.job_id).where(t.sweep_id == sweep_id)  # fmt: skip
        if numbers is not None:
            query = query.where(t.number.in_(list(numbers)))
        if sort == "objective":
            key = t.objective.desc() if mode == "max" else t.objective.asc()
            query = query.order_by(t.objective.is_(None), key, t.number)
        else:
            query = query.order_by(t.number)
        if limit is not None:
            query = query.limit(limit + 1).offset(offset)
        with read_tx(self._engine) as conn:
            self._get(conn, sweep_id, tenant)
            rows = conn.execute(query).mappings().all()
        items = [
            TrialView(**{**dict(r), "status": JobStatus(r["status"]), "told": bool(r["told"])})
            for r in rows
        ]
        if limit is not None and len(items) > limit:
            return items[:limit], _encode([offset + limit])
        return items, None

    def request_cancel(self, *, sweep_id: str, tenant: str | None = None) -> SweepView:
        """Mark the sweep to be cancelled (its controller cancels its trials and ends it; a
        sweep no controller took yet ends cancelled at once). A sweep already ended is
        returned as it is."""
        now = utcnow()
        with write_tx(self._engine) as conn:
            current = self._get(conn, sweep_id, tenant)
            if current.status in ACTIVE:
                conn.execute(
                    update(SWEEPS)
                    .where(SWEEPS.c.id == sweep_id, SWEEPS.c.status.in_(ACTIVE))
                    .values(cancel_requested=True, updated_at=now)
                )
                ended = conn.execute(
                    update(SWEEPS)
                    .where(SWEEPS.c.id == sweep_id, SWEEPS.c.status == "queued")
                    .values(status="cancelled", finished_at=now, updated_at=now)
                    .returning(SWEEPS.c.id)
                ).first()
                if ended is not None:
                    tell_sweep(conn, sweep_id, "cancelled", now)
            return self._get(conn, sweep_id, None)

    def trial_job_ids(self, *, sweep_id: str) -> builtins.list[str]:
        with read_tx(self._engine) as conn:
            return list(
                conn.execute(select(TRIALS.c.job_id).where(TRIALS.c.sweep_id == sweep_id)).scalars()
            )

    # --- the controller's side -------------------------------------------------------------

    def claim(self, *, owner: str, lease_seconds: float, limit: int = 16) -> builtins.list[str]:
        """Take (or keep) the active sweeps no live controller holds, up to ``limit`` in all,
        renewing the lease of those ``owner`` holds already; the ids held afterwards."""
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        c = SWEEPS.c
        free = or_(c.lease_owner.is_(None), c.lease_expires_at < now, c.lease_owner == owner)
        with write_tx(self._engine) as conn:
            picked = select(c.id).where(c.status.in_(ACTIVE), free).order_by(c.created_at, c.id)
            picked = picked.limit(limit)
            if conn.dialect.name == "postgresql":
                picked = picked.with_for_update(skip_locked=True)
            ids = list(conn.execute(picked).scalars())
            if ids:
                conn.execute(
                    update(SWEEPS)
                    .where(c.id.in_(ids))
                    .values(lease_owner=owner, lease_expires_at=expires)
                )
            return ids

    def unclaimed(self) -> bool:
        """Whether an active sweep waits for a controller (none holds it, or its holder's
        lease ran out): one indexed read, cheap enough for every step of a controller."""
        c = SWEEPS.c
        query = (
            select(c.id)
            .where(
                c.status.in_(ACTIVE),
                or_(c.lease_expires_at.is_(None), c.lease_expires_at < utcnow()),
            )
            .limit(1)
        )
        with read_tx(self._engine) as conn:
            return conn.execute(query).first() is not None

    def release(self, *, sweep_id: str, owner: str) -> None:
        """Give up the lease (a controller stopping), so another takes the sweep at once."""
        with write_tx(self._engine) as conn:
            conn.execute(
                update(SWEEPS)
                .where(SWEEPS.c.id == sweep_id, SWEEPS.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def _held(self, sweep_id: str, owner: str) -> builtins.list[Any]:
        return [SWEEPS.c.id == sweep_id, SWEEPS.c.lease_owner == owner]

    def _fenced(self, conn: Any, sweep_id: str, owner: str, **values: Any) -> None:
        values.setdefault("updated_at", utcnow())
        done = conn.execute(
            update(SWEEPS).where(*self._held(sweep_id, owner)).values(values).returning(SWEEPS.c.id)
        ).first()
        if done is None:
            raise SweepLeaseLost(f"sweep {sweep_id}: {owner} no longer holds it")

    def start(
        self,
        *,
        sweep_id: str,
        owner: str,
        mlflow_run_id: str | None,
        mlflow_experiment_id: str | None,
    ) -> None:
        """queued → running (a sweep already running keeps its start), with its MLflow run."""
        now = utcnow()
        with write_tx(self._engine) as conn:
            values: dict[str, Any] = {}
            if mlflow_run_id is not None:
                values.update(
                    mlflow_run_id=mlflow_run_id, mlflow_experiment_id=mlflow_experiment_id
                )
            self._fenced(conn, sweep_id, owner, **values)
            conn.execute(
                update(SWEEPS)
                .where(SWEEPS.c.id == sweep_id, SWEEPS.c.status == "queued")
                .values(status="running", started_at=now)
            )

    def add_trials(
        self,
        *,
        sweep_id: str,
        owner: str,
        trials: Sequence[tuple[int, str, dict[str, Any]]],
    ) -> None:
        """Link each trial (number, job id, parameters) to its job, in one transaction."""
        now = utcnow()
        rows = [
            dict(sweep_id=sweep_id, number=n, job_id=j, params=p, told=False, created_at=now)
            for n, j, p in trials
        ]
        with write_tx(self._engine) as conn:
            self._fenced(conn, sweep_id, owner)
            stmt = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(TRIALS)
            conn.execute(stmt.on_conflict_do_nothing(), rows)

    def tell(
        self,
        *,
        sweep_id: str,
        owner: str,
        number: int,
        objective: float | None,
        best: dict[str, Any] | None = None,
    ) -> int:
        """Record how trial ``number`` ended (its objective, None when it has none) and that
        the searcher was told, with the sweep's new ``best`` when this trial is it (in the
        same transaction: a told trial is never looked at again); its place in the order
        trials ended (``ended_seq``)."""
        with write_tx(self._engine) as conn:
            self._fenced(conn, sweep_id, owner, **({} if best is None else {"best": best}))
            seq = conn.execute(
                select(func.coalesce(func.max(TRIALS.c.ended_seq), 0) + 1).where(
                    TRIALS.c.sweep_id == sweep_id
                )
            ).scalar_one()
            value = objective if objective is None or math.isfinite(objective) else None
            conn.execute(
                update(TRIALS)
                .where(TRIALS.c.sweep_id == sweep_id, TRIALS.c.number == number)
                .values(told=True, objective=value, ended_seq=seq)
            )
            return int(seq)

    def update(self, *, sweep_id: str, owner: str, **values: Any) -> None:
        """Set ``best``, ``notes`` or the MLflow ids of a sweep this controller holds."""
        allowed = {"best", "notes", "mlflow_run_id", "mlflow_experiment_id"}
        if not set(values) <= allowed:
            raise ValueError(f"not a field the controller sets: {set(values) - allowed}")
        with write_tx(self._engine) as conn:
            self._fenced(conn, sweep_id, owner, **values)

    def finish(self, *, sweep_id: str, owner: str, status: str, error: str | None = None) -> None:
        """End the sweep (succeeded, failed or cancelled) and give up its lease; the
        sweep's webhooks are told in the same transaction."""
        if status not in ("succeeded", "failed", "cancelled"):
            raise ValueError(f"a sweep ends succeeded, failed or cancelled, not {status}")
        now = utcnow()
        with write_tx(self._engine) as conn:
            # locked (PostgreSQL) so that a cancel ending it meanwhile waits, and is not told
            # twice; SQLite holds the write lock already
            status_of = select(SWEEPS.c.status).where(SWEEPS.c.id == sweep_id)
            was = conn.execute(status_of.with_for_update()).scalar()
            self._fenced(
                conn,
                sweep_id,
                owner,
                status=status,
                error=error,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            if was in ACTIVE:  # not a sweep a cancel ended already (it was told then)
                tell_sweep(conn, sweep_id, status, now)

    # --- the trial's attempt ---------------------------------------------------------------

    def report(
        self,
        *,
        sweep_id: str,
        job_id: str,
        attempt: int,
        rung: int,
        value: float,
        reduction_factor: int,
        mode: Mode,
    ) -> bool:
        """The objective ``value`` trial job ``job_id`` reached at the end of epoch ``rung``:
        stored with ASHA's decision (whether it goes on), taken from the values of that rung
        stored before it. A rung reported before (by an earlier attempt) keeps its first
        decision. Fenced: :class:`StaleAttempt` when ``attempt`` no longer runs the job."""
        finite = value if math.isfinite(value) else None
        with write_tx(self._engine) as conn:
            if conn.dialect.name == "postgresql":  # one decision of a sweep at a time
                conn.execute(select(SWEEPS.c.id).where(SWEEPS.c.id == sweep_id).with_for_update())
            running = conn.execute(
                select(JOBS.c.id).where(
                    JOBS.c.id == job_id,
                    JOBS.c.status == JobStatus.RUNNING.value,
                    JOBS.c.attempt == attempt,
                )
            ).first()
            if running is None:
                raise StaleAttempt(job_id, attempt, -1, "not running")
            r = REPORTS.c
            earlier = conn.execute(
                select(r.promoted).where(r.job_id == job_id, r.rung == rung)
            ).first()
            if earlier is not None:
                return bool(earlier[0])
            values = [
                math.nan if v is None else v
                for v in conn.execute(
                    select(r.value).where(r.sweep_id == sweep_id, r.rung == rung)
                ).scalars()
            ]
            goes_on = promotable(value, [*values, value], reduction_factor, mode)
            conn.execute(
                insert(REPORTS),
                [
                    dict(
                        sweep_id=sweep_id,
                        job_id=job_id,
                        rung=rung,
                        value=finite,
                        promoted=goes_on,
                        attempt=attempt,
                        at=utcnow(),
                    )
                ],
            )
            return goes_on

    def reports(self, *, sweep_id: str) -> builtins.list[dict[str, Any]]:
        """Every rung report of the sweep in the order stored."""
        with read_tx(self._engine) as conn:
            rows = conn.execute(
                select(REPORTS).where(REPORTS.c.sweep_id == sweep_id).order_by(REPORTS.c.id)
            ).mappings()
            return [dict(r) for r in rows]


def _encode(parts: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


def _decode(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
        if not isinstance(parts, list):
            raise ValueError(cursor)
        return parts
    except (ValueError, TypeError) as exc:
        raise InvalidCursor(cursor) from exc
