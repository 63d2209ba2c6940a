"""The tracking read interface, what the API asks of MLflow: a run's link, learning curves
and artifacts (listed, and fetched one file at a time), data-set uploads and their bytes, a
ping; and ``run_page``, a run's link from ids
already known, which asks MLflow nothing.

Built per app (no client, no MLflow import at import). Calls are blocking: routes run them in
a thread. ``api/`` reaches MLflow through this module only.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from workers.tracking.client import (
    find_or_create_experiment,
    is_remote,
    make_client,
    metric_history,
    run_page,
    run_url,
)
from workers.tracking.names import aliases, mlflow_key

__all__ = [
    "DATASETS_EXPERIMENT",
    "MODEL_FOLDER",
    "PREDICTORS_FILE",
    "Artifact",
    "Tracking",
    "TrackingUnavailable",
    "run_page",
]

DATASETS_EXPERIMENT = "gradq-datasets"
MODEL_FOLDER = "model"  # the run's model files, listed under model/ (runs:/<run_id>/model)
MODEL_URI_TAG = "gradq.model_uri"  # models:/<model_id>, set on the run by its tracker
# weights for predictions (core.predictor): a succeeded run's, and each checkpoint folder's
PREDICTORS_FILE = "predictors.npz"


@dataclass(frozen=True)
class Artifact:
    """A file of a run: its path in the run (``/``-separated) and its size in bytes (None
    where the artifact store does not say)."""

    path: str
    size: int | None


class TrackingUnavailable(Exception):
    """MLflow did not answer (or refused): the API answers 503."""


class Tracking:
    def __init__(self, *, tracking_uri: str, artifact_root: str | None, ui_url: str) -> None:
        self.tracking_uri, self.artifact_root, self.ui_url = tracking_uri, artifact_root, ui_url
        self._links: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def remote(self) -> bool:
        return is_remote(self.tracking_uri)

    def run_link(self, run_id: str) -> str | None:
        """The run's page in the MLflow UI (cached: a run never changes experiment); None
        while MLflow cannot say."""
        if run_id in self._links:
            return self._links[run_id]
        try:
            self.reachable()
            link = run_url(ui_base=self.ui_url, tracking_uri=self.tracking_uri, run_id=run_id)
        except Exception:
            return None
        with self._lock:
            self._links[run_id] = link
        return link

    def curves(
        self, run_id: str, keys: list[str] | None = None
    ) -> dict[str, list[tuple[int, float]]]:
        """Each metric of the run (or only ``keys``) as (step, value), by step.

        Metrics are named by their MLflow keys (``loss/val``, ``weights/layer1_weight_norm``,
        ``final_test_accuracy``: ``workers.tracking.names``), also those of a run logged under
        the former flat names. A key asked for may be either name (``val_loss`` or
        ``loss/val``): its curve is answered under the name asked, from whichever the run has
        (both merged, by step, for a run that a resumed attempt continued under the new)."""
        from mlflow.exceptions import MlflowException

        self.reachable()
        try:
            logged = set(make_client(self.tracking_uri).get_run(run_id).data.metrics)
            names = keys or sorted({mlflow_key(k) for k in logged})
            return {name: self._curve(run_id, name, logged) for name in names}
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise TrackingUnavailable(f"MLflow refused: {exc.message}") from exc
        except Exception as exc:
            raise TrackingUnavailable(f"MLflow is not reachable: {exc}") from exc

    def _curve(self, run_id: str, name: str, logged: set[str]) -> list[tuple[int, float]]:
        points: dict[int, float] = {}
        uri = self.tracking_uri
        for key in reversed(aliases(name)):  # the former name first: the key's points win
            if key in logged:
                points.update(metric_history(tracking_uri=uri, run_id=run_id, key=key))
        return sorted(points.items())

    def artifacts(self, run_id: str) -> list[Artifact]:
        """Every file of the run, by path: what its attempts logged (checkpoints, gradient-check
        reports, the learning-curve picture, ``error.txt``) and the files of its model under
        ``model/`` once it has one. Empty for a run MLflow does not know."""
        from mlflow.exceptions import MlflowException

        self.reachable()
        try:
            client = make_client(self.tracking_uri)
            found = _walk(lambda path: client.list_artifacts(run_id, path))
            model_id = _model_id(client.get_run(run_id).data.tags.get(MODEL_URI_TAG))
            if model_id is not None:
                files = _walk(lambda path: client.list_logged_model_artifacts(model_id, path))
                found += [Artifact(f"{MODEL_FOLDER}/{a.path}", a.size) for a in files]
            return sorted(found, key=lambda a: a.path)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise TrackingUnavailable(f"MLflow refused: {exc.message}") from exc
        except Exception as exc:
            raise TrackingUnavailable(f"MLflow is not reachable: {exc}") from exc

    def fetch_artifact(self, run_id: str, path: str, folder: str) -> Path | None:
        """A local copy, under ``folder``, of the run's file ``path`` as :meth:`artifacts`
        lists it; None when it lists no such file (a folder, a path that leaves the run, a
        file of another run: only a listed path is ever fetched)."""
        import mlflow.artifacts

        if path not in {a.path for a in self.artifacts(run_id)}:
            return None
        try:
            if path.startswith(f"{MODEL_FOLDER}/"):
                client = make_client(self.tracking_uri)
                model_id = _model_id(client.get_run(run_id).data.tags.get(MODEL_URI_TAG))
                assert model_id is not None  # listed: the run has a model
                location = client.get_logged_model(model_id).artifact_location
                uri = location.rstrip("/") + "/" + path.removeprefix(f"{MODEL_FOLDER}/")
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=folder, tracking_uri=self.tracking_uri
                )
            else:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=path,
                    dst_path=folder,
                    tracking_uri=self.tracking_uri,
                )
        except Exception as exc:
            raise TrackingUnavailable(f"could not fetch {path} from MLflow: {exc}") from exc
        return Path(local)

    def store_dataset(self, *, data: bytes, filename: str, tenant: str, name: str) -> str:
        """Log the bytes as an artifact of a new run in the ``gradq-datasets`` experiment;
        returns its ``runs:/<run_id>/<filename>`` URI, which any worker downloads with
        ``mlflow.artifacts.download_artifacts`` from the same tracking server."""
        self.reachable()
        client = make_client(self.tracking_uri)
        experiment_id = find_or_create_experiment(
            client,
            DATASETS_EXPERIMENT,
            tracking_uri=self.tracking_uri,
            artifact_root=self.artifact_root,
        )
        run = client.create_run(
            experiment_id,
            run_name=name,
            tags={"gradq.tenant": tenant, "gradq.kind": "dataset"},
        )
        run_id = run.info.run_id
        try:
            with tempfile.TemporaryDirectory(prefix="gradq-upload-") as tmp:
                path = Path(tmp) / filename
                path.write_bytes(data)
                client.log_artifact(run_id, str(path))
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        return f"runs:/{run_id}/{filename}"

    def download(self, uri: str, folder: str) -> Path:
        """The local copy of an artifact stored by :meth:`store_dataset`."""
        import mlflow.artifacts

        self.reachable()
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=folder, tracking_uri=self.tracking_uri
            )
        except Exception as exc:
            raise TrackingUnavailable(f"could not fetch {uri} from MLflow: {exc}") from exc
        return Path(local)

    def reachable(self) -> None:
        """Raise ``TrackingUnavailable`` at once when a tracking server does not answer its
        /health (2 s): the MLflow client would otherwise retry a refused call for minutes,
        and the request waiting on it would hang instead of answering 503. Asked before
        every call (one short request to a live server); a server that dies between the two
        is still waited for."""
        if not self.remote:
            return
        try:
            self.ping(timeout=2.0)
        except Exception as exc:
            raise TrackingUnavailable(f"MLflow is not reachable: {exc}") from exc

    def ping(self, timeout: float = 3.0) -> str:
        """Raise unless the tracking store answers; returns what was checked."""
        if self.remote:
            url = self.tracking_uri.rstrip("/") + "/health"
            httpx.get(url, timeout=timeout).raise_for_status()
            return f"{self.tracking_uri} answers /health"
        make_client(self.tracking_uri).search_experiments(max_results=1)
        return f"{_safe(self.tracking_uri)} answers"


def _walk(listing: Callable[[str | None], list[Any]]) -> list[Artifact]:
    """The files below a folder of artifacts, depth first, from ``listing(folder)`` (MLflow's
    ``FileInfo``: path, is_dir, file_size; None for the top)."""
    found: list[Artifact] = []
    folders: list[str | None] = [None]
    while folders:
        for info in listing(folders.pop()):
            if info.is_dir:
                folders.append(info.path)
            else:
                found.append(Artifact(info.path, info.file_size))
    return found


def _model_id(model_uri: str | None) -> str | None:
    """The logged model's id of a ``models:/<model_id>`` URI (the run's tag)."""
    if not model_uri or not model_uri.startswith("models:/"):
        return None
    model_id = model_uri.removeprefix("models:/").strip("/")
    return model_id if model_id and "/" not in model_id else None


def _safe(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@")
    return uri
