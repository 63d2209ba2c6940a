"""A sweep's parent run in MLflow: its trials' runs are its children (``mlflow.parentRunId``,
set by ``JobTracker`` from the trial's spec), so MLflow's compare and parallel-coordinates
views take the sweep's trials together.

The parent run lives in the base spec's experiment (scoped by tenant, like a job's), tagged
with the sweep id: a controller that took the sweep over after a crash finds it again rather
than making a second one. It logs the searched space and the objective as params, the best
objective so far as the metric ``best_<metric>`` (its step: the count of trials ended when it
improved), the best trial as tags ``best.*``, and at the end ``results.csv`` (one row per
trial) and its status.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from core.sweep import Sweep
from workers.tracking.artifacts import _register_once
from workers.tracking.client import find_or_create_experiment, make_client
from workers.tracking.run import _now_ms
from workers.tracking.scope import scoped_name

_END = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


@dataclass
class SweepRuns:
    """The controller's ``SweepTracking`` on an MLflow tracking server or store."""

    tracking_uri: str
    artifact_root: str | None = None
    tenant_names: bool = False  # API keys on: names scoped by tenant

    def start(self, *, sweep_id: str, tenant: str, sweep: Sweep) -> tuple[str, str]:
        """The sweep's run (found by its tag, else made): (run id, experiment id)."""
        client = make_client(self.tracking_uri)
        name = scoped_name(
            sweep.base.experiment, tenant=tenant if self.tenant_names else None, field="experiment"
        )
        experiment_id = find_or_create_experiment(
            client, name, tracking_uri=self.tracking_uri, artifact_root=self.artifact_root
        )
        if "'" not in sweep_id:
            found = client.search_runs(
                [experiment_id], f"tags.`gradq.sweep_run` = '{sweep_id}'", max_results=10
            )
            if found:
                keep = min(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))
                return keep.info.run_id, experiment_id
        spec = sweep.spec
        run = client.create_run(
            experiment_id,
            run_name=spec.name,
            tags={
                "gradq.sweep_run": sweep_id,
                "gradq.sweep_id": sweep_id,
                "mlflow.note.content": f"gradq sweep {sweep_id}: {spec.search.method} search, "
                f"{sweep.trial_count()} trials, objective {spec.objective.metric} "
                f"({sweep.direction})",
            },
        )
        run_id = run.info.run_id
        params = {
            "method": spec.search.method,
            "trials": str(sweep.trial_count()),
            "parallel": str(spec.search.parallel),
            "objective": f"{spec.objective.metric} ({sweep.direction})",
            "early_stopping": spec.early_stopping.kind,
        }
        params |= {f"space.{d.path}": _short(spec.space[d.path]) for d in sweep.dimensions}
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        return run_id, experiment_id

    def best(self, *, run_id: str, step: int, best: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        client = make_client(self.tracking_uri)
        tags = [
            RunTag("best.trial", str(best["trial"])),
            RunTag("best.job_id", str(best["job_id"])),
        ]
        tags += [RunTag(f"best.{k}", _short(v)) for k, v in best["params"].items()]
        client.log_batch(
            run_id,
            metrics=[Metric("best_objective", float(best["objective"]), _now_ms(), step)],
            tags=tags,
        )

    def finish(
        self,
        *,
        run_id: str,
        status: str,
        rows: list[dict[str, Any]],
        best: dict[str, Any] | None,
        register_as: str | None,
        tenant: str,
    ) -> None:
        """The results table, the best trial's model registered as ``register_as`` (scoped
        by tenant like a job's; once per trial job, whoever asks again), and the status."""
        client = make_client(self.tracking_uri)
        if register_as is not None and best is not None and best.get("mlflow_run_id"):
            model_uri = client.get_run(best["mlflow_run_id"]).data.tags.get("gradq.model_uri")
            if model_uri is not None:
                name = scoped_name(
                    register_as,
                    tenant=tenant if self.tenant_names else None,
                    field="register_as",
                )
                version = _register_once(
                    client,
                    self.tracking_uri,
                    model_uri.removeprefix("models:/"),
                    name,
                    str(best["job_id"]),
                )
                client.set_tag(run_id, "best.registered", f"{name}/{version}")
        if rows:
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
            client.log_text(run_id, out.getvalue(), "results.csv")
        client.set_terminated(run_id, _END[status])


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:500]


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value
