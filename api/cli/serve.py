"""``gradq serve`` (everything in one process), ``gradq api`` and ``gradq dispatcher``.

``serve`` runs the migrations, starts the dispatcher with a local Ray in a thread, the MLflow
UI as a subprocess (unless ``--no-mlflow-ui``) and the API with uvicorn. When the local Ray's
raylet or GCS server dies, the dispatcher starts a new local Ray (its jobs wait meanwhile, and
``/readyz`` answers 503 saying so). SIGINT and SIGTERM stop all of it; the database keeps
every job, so a restart finds them as they were (a job that was running is requeued when its
lease expires and resumes from its checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlparse

import typer
from rich.console import Console

from api.cli.quiet import quiet_libraries
from core import defaults

if TYPE_CHECKING:
    from fastapi import FastAPI

    from api.settings import Settings
    from workers.dispatcher import Dispatcher

err = Console(stderr=True)
log = logging.getLogger("gradq.serve")

HostOpt = Annotated[
    str | None, typer.Option(help=f"bind address [$GRADQ_HOST, {defaults.API_HOST}]")
]
PortOpt = Annotated[
    int | None,
    typer.Option(
        help=f"port; 0: any free one, named in the log [$GRADQ_PORT, {defaults.API_PORT}]"
    ),
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="allow a non-loopback address without API keys")
]


def settings_errors(exc: ValueError, options: dict[str, Any]) -> list[str]:
    """One line per bad setting, named as the user set it: ``--host``/``--port`` when given
    as options, else the environment variable (``GRADQ_AUTH``), with what was given and
    what is allowed — not pydantic's field names and links."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return [str(exc)]
    lines = []
    for e in exc.errors(include_url=False):
        field = str(e["loc"][0]) if e["loc"] else ""
        name = f"--{field}" if options.get(field) is not None else f"GRADQ_{field.upper()}"
        message = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        lines.append(f"{name}: {message}" + (f" (got {given!r})" if field else ""))
    return lines


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _settings(
    host: str | None, port: int | None, insecure: bool, mlflow_port: int | None = None
) -> Settings:
    from api.settings import Settings

    overrides: dict[str, Any] = {"host": host, "port": port}
    if mlflow_port is not None:
        overrides["mlflow_ui_url"] = f"http://127.0.0.1:{mlflow_port}"
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        err.print("[bold red]invalid settings:[/]")
        for line in settings_errors(exc, overrides):
            err.print(f"  {line}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    refusal = settings.bind_refusal(insecure=insecure)
    if refusal:
        err.print(f"[bold red]{refusal}[/]")
        raise typer.Exit(2)
    warn_new_store(settings)
    return settings


def warn_new_store(settings: Settings) -> None:
    """A warning when the command is about to create a new, empty store: jobs and keys of
    another folder are not in it."""
    path = settings.new_store()
    if path is not None:
        err.print(
            f"[yellow]warning:[/] no gradq store at {path}: creating a new, empty one. If "
            "your jobs and keys are in another folder, pass --home DIR (gradq --home DIR "
            "COMMAND) or set GRADQ_HOME",
            highlight=False,
            soft_wrap=True,
        )


def _prepare(settings: Settings) -> None:
    """Migrate the database; create a local MLflow store's schema before serving."""
    from db.migrate import upgrade

    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    upgrade(settings.database_url)
    if settings.bootstrap_api_key is not None:
        from db.keys import KeyStore
        from db.session import make_engine

        engine = make_engine(settings.database_url)
        key = settings.bootstrap_api_key.get_secret_value()
        # the deployment's own key: an operator's (it may read /metrics)
        if KeyStore(engine).ensure(tenant=settings.bootstrap_tenant, key=key, role="operator"):
            logging.getLogger("gradq").info("stored the bootstrap API key")
        engine.dispose()
    if urlparse(settings.mlflow_tracking_uri).scheme not in ("http", "https"):
        from workers.tracking import make_client

        make_client(settings.mlflow_tracking_uri).search_experiments(max_results=1)


def _dispatcher(settings: Settings) -> Dispatcher:
    from db.datasets import DatasetStore
    from db.keys import KeyStore
    from db.session import make_engine
    from db.store import JobStore
    from db.sweeps import SweepStore
    from workers.dispatcher import Dispatcher, DispatcherConfig
    from workers.sweeps import SweepController
    from workers.task import WorkerConfig
    from workers.tracking.sweep import SweepRuns

    worker = WorkerConfig(
        database_url=settings.database_url,
        tracking_uri=settings.mlflow_tracking_uri,
        artifact_root=settings.artifact_root,
        lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        tenant_names=settings.auth == "keys",
        db_connections=settings.worker_db_connections,
    )
    config = DispatcherConfig(
        worker=worker,
        ray_address=settings.ray_address,
        ray_num_cpus=settings.ray_num_cpus,
        unsatisfiable=settings.unsatisfiable,
        backfill_seconds=settings.backfill_seconds,
        max_running_per_tenant=settings.tenant_max_running,
        pack_size=settings.pack_size,
        pack_size_gpu=settings.pack_size_gpu,
    )
    engine = make_engine(settings.database_url)
    # the caps of the stored keys apply whatever GRADQ_AUTH the dispatcher runs with (the
    # compose deployment sets it for the API only); with no key setting one, the settings'
    dispatcher = Dispatcher(config, JobStore(engine), KeyStore(engine), DatasetStore(engine))
    # every dispatcher drives sweeps: a lease on each sweep lets one of them drive it
    dispatcher.sweeps = SweepController(
        SweepStore(engine),
        dispatcher.store,
        settings.database_url,
        tracking=SweepRuns(
            settings.mlflow_tracking_uri,
            artifact_root=settings.artifact_root,
            tenant_names=settings.auth == "keys",
        ),
        limits=settings.limits,
        max_queued=settings.max_queued_per_tenant,
    )
    return dispatcher


def _uvicorn(app: FastAPI | str, settings: Settings, workers: int = 1) -> None:
    """Serve ``app`` (or, with several worker processes, the factory named by it). uvicorn
    picks httptools and uvloop when they are installed (its "auto"), else h11 and asyncio."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
        workers=workers,
        factory=isinstance(app, str),
    )
    if workers == 1:
        uvicorn.Server(config).run()
        return
    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    Multiprocess(config, sockets=[sock]).run()


@contextlib.contextmanager
def _mlflow_ui(settings: Settings) -> Iterator[None]:
    """``mlflow ui`` on the tracking store, in its own process group, stopped on exit."""
    ui = urlparse(settings.mlflow_ui_url)
    root = Path(settings.artifact_root or defaults.MLFLOW_ARTIFACT_ROOT).expanduser().resolve()
    command = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", settings.mlflow_tracking_uri,
        "--default-artifact-root", root.as_uri(),
        "--host", "127.0.0.1", "--port", str(ui.port or 5000), "--workers", "1",
    ]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True)
    err.print(f"MLflow UI on {settings.mlflow_ui_url} (pid {process.pid})")
    try:
        yield
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    import os

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt): every ``finally`` runs."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except KeyboardInterrupt:
        err.print("stopped")


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def serve(
    host: HostOpt = None,
    port: PortOpt = None,
    no_mlflow_ui: Annotated[
        bool, typer.Option("--no-mlflow-ui", help="do not start the MLflow UI")
    ] = False,
    mlflow_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="the MLflow UI's port (on 127.0.0.1), which job links name "
            "[$GRADQ_MLFLOW_UI_URL, 5000]",
            show_default=False,
        ),
    ] = None,
    insecure: InsecureOpt = False,
) -> None:
    """Everything in one process: API, dispatcher with a local Ray, MLflow UI."""
    settings = _settings(host, port, insecure, mlflow_port)
    from api.main import create_app
    from workers import probes
    from workers.dispatcher import run_in_thread, stop_ray

    with _signals_stop(), contextlib.ExitStack() as stack:
        _prepare(settings)
        local_ui = urlparse(settings.mlflow_tracking_uri).scheme not in ("http", "https")
        if not no_mlflow_ui and local_ui:
            stack.enter_context(_mlflow_ui(settings))
        dispatcher = _dispatcher(settings)
        stack.callback(stop_ray)
        thread, stop = run_in_thread(dispatcher)
        stack.callback(thread.join, 15)
        stack.callback(stop.set)
        signal.signal(signal.SIGTERM, _interrupt)  # ray.init installed its own
        app = create_app(settings, ray_probe=probes.local_ray(thread, dispatcher.local_ray_down))
        stack.callback(_ignore_signals)  # runs first: the clean-up is not interrupted
        where = str(settings.port or "<a free port, named below>")
        err.print(f"gradq on http://{settings.host}:{where} (auth: {settings.auth})")
        _uvicorn(app, settings)


def api(
    host: HostOpt = None,
    port: PortOpt = None,
    insecure: InsecureOpt = False,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="processes serving the one port (one per core)")
    ] = 1,
) -> None:
    """The HTTP API only (jobs queue; run `gradq dispatcher` to run them)."""
    settings = _settings(host, port, insecure)
    from api.main import create_app

    with _signals_stop():
        _prepare(settings)
        if workers == 1:
            _uvicorn(create_app(settings), settings)
        else:  # each worker process builds its app from the same environment
            _uvicorn("api.main:app_from_environment", settings, workers)


def dispatcher() -> None:
    """The dispatcher only, blocking: claims queued jobs and runs them on Ray."""
    settings = _settings(None, None, insecure=True)
    from workers.dispatcher import stop_ray

    with _signals_stop():
        _prepare(settings)
        d = _dispatcher(settings)
        stop = threading.Event()
        d.connect()
        signal.signal(signal.SIGTERM, _interrupt)
        err.print(f"dispatcher {d.config.owner} running (Ray: {settings.ray_address or 'local'})")
        try:
            d.run(stop)
        finally:
            _ignore_signals()
            stop.set()
            stop_ray()


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command("api")(api)
    app.command()(dispatcher)
