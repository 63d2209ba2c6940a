"""Freeing a job's bytes in MLflow's artifact store: its run's artifacts (checkpoints, plots,
gradient-check reports, error text) and the model logged from it, which MLflow 3 keeps
apart from the run's artifacts, under its experiment's ``models/``.

MLflow's own ``delete_run`` only marks the run deleted: its artifacts stay in the store until
``mlflow gc``. Here the bytes are removed through the artifact repository of each location
(a folder, ``mlflow-artifacts:`` of a server that serves them, or an object store), so they
are gone whatever MLflow's garbage collector does.

Light at import (no MLflow, no torch): the API imports it for ``DELETE /v1/jobs/{id}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from workers.tracking.client import make_client

log = logging.getLogger(__name__)


@dataclass
class Freed:
    """What freeing a run removed, or (a dry run) would remove: files and their bytes."""

    files: int = 0
    bytes: int = 0
    models: list[str] = field(default_factory=list)  # the logged models' ids

    def add(self, other: Freed) -> None:
        self.files, self.bytes = self.files + other.files, self.bytes + other.bytes
        self.models += other.models


def free_run(
    *,
    tracking_uri: str,
    run_id: str,
    keep: Iterable[str] = (),
    models: bool = True,
    apply: bool = False,
    delete_run: bool = False,
) -> Freed:
    """Remove the run's artifacts but those under ``keep`` (paths such as
    ``checkpoints/last``) and, with ``models``, the models logged from the run (their files,
    and the models themselves) but those a registered model version holds; with
    ``delete_run`` also those, with their registered versions, and mark the run deleted.
    Without ``apply`` nothing is changed: the answer says what would be freed. A run MLflow
    no longer has frees nothing. Raises when MLflow fails (the caller keeps its record, so
    that a later try frees the rest)."""
    from mlflow.exceptions import MlflowException

    from workers.tracking.artifacts import artifact_repository

    client = make_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return Freed()
        raise
    kept = tuple(p.strip("/") for p in keep)
    freed = _free(artifact_repository(run.info.artifact_uri, tracking_uri), None, kept, apply)
    versions = client.search_model_versions(f"run_id = '{run_id}'") if models else []
    registered = {_model_id(v) for v in versions}
    if models:
        for model in _logged_models(client, run.info.experiment_id, run_id):
            if model.model_id in registered and not delete_run:
                continue  # a registered version's files stay while it is registered
            repo = artifact_repository(model.artifact_location, tracking_uri)
            gone = _free(repo, None, (), apply)
            gone.models.append(model.model_id)
            if apply:
                client.delete_logged_model(model.model_id)
            freed.add(gone)
    if apply and delete_run:
        for version in versions:
            client.delete_model_version(version.name, version.version)
        client.delete_run(run_id)
    return freed


def _model_id(version: Any) -> str | None:
    """The logged model a registered version holds (its ``source``, ``models:/<id>``, where
    the store does not fill its ``model_id``)."""
    source = str(version.source or "")
    return version.model_id or (source.split("/")[1] if source.startswith("models:/") else None)


def _logged_models(client: Any, experiment_id: str, run_id: str) -> list[Any]:
    found = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    return [m for m in found if m.source_run_id == run_id]


def _free(repo: Any, path: str | None, keep: tuple[str, ...], apply: bool) -> Freed:
    """Free what ``repo`` holds under ``path`` but ``keep``: a file or a folder with nothing
    to keep in it goes whole; a folder above something kept is walked into."""
    freed = Freed()
    for entry in repo.list_artifacts(path):
        name = entry.path.strip("/")
        if any(name == k or name.startswith(k + "/") for k in keep):
            continue
        if entry.is_dir:
            if any(k.startswith(name + "/") for k in keep):
                freed.add(_free(repo, name, keep, apply))
                continue
            inside = _sizes(repo, name)
            freed.files += len(inside)
            freed.bytes += sum(inside)
        else:
            freed.files += 1
            freed.bytes += entry.file_size or 0
        if apply:
            repo.delete_artifacts(name)
    return freed


def _sizes(repo: Any, path: str) -> list[int]:
    """The sizes of every file under ``path``."""
    out: list[int] = []
    for entry in repo.list_artifacts(path):
        if entry.is_dir:
            out += _sizes(repo, entry.path)
        else:
            out.append(entry.file_size or 0)
    return out


def checkpoints() -> tuple[str, str, str]:
    """What a retention policy that keeps checkpoints keeps of an expired run: its last and
    best checkpoints' folders (each checkpoint with its predictors file) and the model's
    predictors file, which predictions read (a few kilobytes)."""
    from workers.tracking.buffer import BEST_CHECKPOINT, LAST_CHECKPOINT
    from workers.tracking.read import PREDICTORS_FILE

    return LAST_CHECKPOINT, BEST_CHECKPOINT, PREDICTORS_FILE
