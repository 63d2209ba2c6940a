"""The ``gradq`` commands that talk to the service over HTTP: submit (and watch), jobs, show,
cancel, logs, predict, datasets. ``--url`` defaults to $GRADQ_URL or the address the API listens on
by default (``core.defaults.API_URL``), ``--key`` to $GRADQ_API_KEY."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.cli.http import ApiClient, ApiFailure
from api.cli.tables import add, listing, when
from core import defaults

console = Console()
err = Console(stderr=True)
datasets_app = typer.Typer(help="Uploaded data sets.", no_args_is_help=True)

UrlOpt = Annotated[
    str | None, typer.Option("--url", help=f"the service [$GRADQ_URL, {defaults.API_URL}]")
]
KeyOpt = Annotated[str | None, typer.Option("--key", help="an API key [$GRADQ_API_KEY]")]
TERMINAL = ("succeeded", "failed", "cancelled", "pruned")  # pruned: a sweep's trial
WATCH_POLL_SECONDS = 0.5


def _call(client: ApiClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return client.call(method, path, **kwargs)
    except ApiFailure as exc:
        fail(exc)


def fail(exc: ApiFailure) -> NoReturn:
    """Print the service's refusal (a line per problem, each naming its field); exit 1."""
    err.print(f"[bold red]{escape(exc.message)}[/]", highlight=False)
    raise typer.Exit(1) from None


def read_yaml(path: Path) -> Any:
    """The YAML (or JSON) document in ``path``; exits 2 naming the file and, for YAML that
    does not parse, ``FILE:LINE:COLUMN:`` and the problem."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or exc}"
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = f"{where}: {exc.problem or exc.context}"
        if exc.context and exc.context_mark and exc.problem:
            at = exc.context_mark
            problem += f" ({exc.context} at line {at.line + 1}, column {at.column + 1})"
    except yaml.YAMLError as exc:
        problem = f"{path}: {exc}"
    err.print(f"[red]{escape(problem)}[/]", highlight=False)
    raise typer.Exit(2)


def submit(
    job: Annotated[Path, typer.Argument(help="the job spec, YAML or JSON")],
    watch: Annotated[bool, typer.Option("--watch", help="follow it to the end")] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="submit at most once")] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Submit a job; prints its id. With --watch: a live bar, then the final metrics and the
    MLflow link; the exit status is 1 when the job did not succeed."""
    spec = read_yaml(job)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with ApiClient(url, key) as client:
        created = _call(client, "POST", "/v1/jobs", json=spec, headers=headers)
        typer.echo(created["id"])
        if watch:
            final = _watch(client, created)
            _summary(final)
            if final["status"] != "succeeded":
                raise typer.Exit(1)


def _watch(client: ApiClient, job: dict[str, Any]) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
    )
    epochs = job["spec"]["optimizer"]["epochs"]
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(job["name"], total=epochs, metrics="")
        while job["status"] not in TERMINAL:
            time.sleep(WATCH_POLL_SECONDS)
            job = _call(client, "GET", f"/v1/jobs/{job['id']}")
            bar.update(task, description=f"{job['name']} [{job['status']}]", **_bar(job))
        bar.update(task, description=f"{job['name']} [{job['status']}]", **_bar(job))
    return job


def _bar(job: dict[str, Any]) -> dict[str, Any]:
    p = job.get("progress") or {}
    m = p.get("metrics") or {}
    parts = []
    if job["status"] == "queued":
        parts.append(job.get("pending_reason") or "queued")
    for name, label in (("train_loss", "loss"), ("val_loss", "val loss")):
        if m.get(name) is not None:
            parts.append(f"{label} {m[name]:.4f}")
    if m.get("val_accuracy") is not None:
        parts.append(f"val acc {m['val_accuracy']:.4f}")
    elif m.get("val_rmse") is not None:
        parts.append(f"val rmse {m['val_rmse']:.4g}")
    return {"completed": p.get("epoch", 0), "metrics": "  ".join(parts)}


def _summary(job: dict[str, Any]) -> None:
    status = job["status"]
    style = {"succeeded": "green", "failed": "red"}.get(status, "yellow")
    console.print(f"job {job['id']} [{style}]{status}[/]", highlight=False)
    result = job.get("result") or {}
    if result.get("metrics"):
        console.print(f"{job['name']}: best epoch {result.get('best_epoch')}", highlight=False)
        table = Table("metric", "value")
        for k, v in result["metrics"].items():
            table.add_row(k, "-" if v is None else f"{v:.4f}")
        console.print(table)
    if job.get("error"):
        error = job["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        console.print(f"[red]error:[/] {message}", highlight=False)
    link = job["links"].get("mlflow_run")
    if link or job.get("mlflow_run_id"):
        console.print(
            f"MLflow run: {link or job['mlflow_run_id']}", highlight=False, soft_wrap=True
        )
    files = job["links"].get("artifacts")
    if files and job.get("mlflow_run_id"):  # the run's files through gradq's API (any tenant)
        console.print(f"files: {files}", highlight=False, soft_wrap=True)


def jobs(
    status: Annotated[str | None, typer.Option(help="only this status")] = None,
    name: Annotated[str | None, typer.Option(help="only names starting with this")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="KEY:VALUE, e.g. team:vision; repeat for all of them")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(help="a final metric's threshold, e.g. 'test_accuracy>=0.9'; repeatable"),
    ] = None,
    created_after: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    created_before: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    sort: Annotated[
        str | None,
        typer.Option(help="a final metric, -NAME highest first (e.g. -test_accuracy)"),
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 20,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Your jobs, newest first (or by a final metric with --sort), filtered."""
    given = {"status": status, "name_prefix": name, "tag": tag, "metric": metric,
             "created_after": created_after, "created_before": created_before, "sort": sort,
             "limit": limit}  # fmt: skip
    params = {k: v for k, v in given.items() if v}
    with ApiClient(url, key) as client:
        page = _call(client, "GET", "/v1/jobs", params=params)
    shown = sort.removeprefix("-") if sort and sort != "-created_at" else None
    columns = ("name", "status", "epoch", *((shown,) if shown else ()), "created")
    table = listing(console, [j["id"] for j in page["items"]], *columns)
    for j in page["items"]:
        p = j.get("progress") or {}
        epoch = f"{p.get('epoch', 0)}/{p.get('epochs', '?')}" if p else ""
        row = {"id": j["id"], "name": j["name"], "status": j["status"], "epoch": epoch,
               "created": when(j["created_at"])}  # fmt: skip
        if shown:
            value = ((j.get("result") or {}).get("metrics") or {}).get(shown)
            row[shown] = "" if value is None else f"{value:.4g}"
        add(table, row)
    console.print(table)


def rerun(
    job_id: Annotated[str, typer.Argument(help="the job to run again")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="PATH=VALUE changes the spec, e.g. optimizer.epochs=200 (the value is YAML; "
            "null removes the field); repeatable",
        ),
    ] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Queue a new job with another job's spec, changed by --set; prints its id."""
    patch = spec_patch(set_ or [])
    with ApiClient(url, key) as client:
        created = _call(client, "POST", f"/v1/jobs/{job_id}/rerun", json=patch)
    typer.echo(created["id"])


def spec_patch(settings: list[str]) -> dict[str, Any]:
    """The JSON merge patch of ``--set PATH=VALUE`` options (dotted paths, YAML values);
    exits 2 naming an option that is not one."""
    patch: dict[str, Any] = {}
    for item in settings:
        path, equals, raw = item.partition("=")
        keys = path.split(".")
        if not equals or not all(keys):
            _bad_option(f"--set {item!r}: give PATH=VALUE, e.g. optimizer.epochs=200")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            _bad_option(f"--set {item!r}: the value is not YAML ({exc})")
        at = patch
        for k in keys[:-1]:
            if not isinstance(at.get(k), dict):
                at[k] = {}
            at = at[k]
        at[keys[-1]] = value
    return patch


def _bad_option(message: str) -> NoReturn:
    err.print(f"[red]{escape(message)}[/]", highlight=False)
    raise typer.Exit(2)


def show(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Everything about one job, as JSON."""
    with ApiClient(url, key) as client:
        console.print_json(json.dumps(_call(client, "GET", f"/v1/jobs/{job_id}")))


def cancel(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Cancel a job (a running one stops between two steps)."""
    with ApiClient(url, key) as client:
        job = _call(client, "POST", f"/v1/jobs/{job_id}/cancel")
    note = " (cancel requested)" if job["status"] == "running" else ""
    typer.echo(f"{job['id']} {job['status']}{note}")


def delete(
    job_id: Annotated[str, typer.Argument(help="the job's whole id")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Delete a finished job: its MLflow run and artifact bytes, then the job itself."""
    with ApiClient(url, key) as client:
        gone = _call(client, "DELETE", f"/v1/jobs/{job_id}")
    typer.echo(f"{gone['id']} deleted: {gone['freed_bytes']:,} bytes freed "
               f"({gone['freed_files']} files)")  # fmt: skip


def logs(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """The job's status history."""
    with ApiClient(url, key) as client:
        events = _call(client, "GET", f"/v1/jobs/{job_id}/events")
    for e in events:
        typer.echo(
            f"{e['at'][:23]}  {e['from_status'] or '-':>9} → {e['to_status']:<9}"
            f"  attempt {e['attempt']}  {e['reason'] or ''}"
        )


def predict(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    rows: Annotated[Path, typer.Argument(help="a CSV file whose header names the features")],
    checkpoint: Annotated[
        str, typer.Option(help="best: the job's model; last: its last epoch's weights")
    ] = "best",
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as JSON")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print a CSV")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Predictions of a succeeded job's model for the rows of a CSV file: a table of each
    row's prediction (a classifier's with its probability), or --csv (a classifier's with
    one column of probability per class), or --json."""
    try:
        data = rows.read_bytes()
    except OSError as exc:
        err.print(f"[red]cannot read {rows}: {exc.strerror}[/]", highlight=False)
        raise typer.Exit(2) from None
    with ApiClient(url, key) as client:
        answer = _call(
            client, "POST", f"/v1/jobs/{job_id}/predict", params={"checkpoint": checkpoint},
            files={"file": (rows.name, data, "text/csv")},
        )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(answer))
        return
    classes, probabilities = answer.get("classes"), answer.get("probabilities")
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["prediction", *(f"p_{c}" for c in classes or [])])
        for i, value in enumerate(answer["predictions"]):
            writer.writerow([value, *(probabilities[i] if probabilities else [])])
        typer.echo(out.getvalue(), nl=False)
        return
    table = Table("row", "prediction", *(["probability"] if probabilities else []))
    for i, value in enumerate(answer["predictions"]):
        cells = [str(i + 1), str(value)]
        if probabilities:
            cells.append(f"{max(probabilities[i]):.4f}")
        table.add_row(*cells)
    console.print(table)


@datasets_app.command("upload")
def upload(
    file: Annotated[Path, typer.Argument(help="a CSV file with a header row")],
    target: Annotated[str, typer.Option(help="the column to predict")],
    name: Annotated[str | None, typer.Option(help="default: the file name")] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Upload a CSV; prints its id (use it as dataset: {name: upload, id: …, target: …})."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        err.print(f"[red]cannot read {file}: {exc.strerror}[/]")
        raise typer.Exit(2) from None
    form = {"target": target, **({"name": name} if name else {})}
    with ApiClient(url, key) as client:
        ds = _call(client, "POST", "/v1/datasets", files={"file": (file.name, data)}, data=form)
    typer.echo(ds["id"])
    err.print(f"{ds['rows']} rows, columns {', '.join(ds['columns'])}, sha256 {ds['sha256'][:12]}…")


@datasets_app.command("list")
def list_datasets(url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Your uploaded data sets."""
    with ApiClient(url, key) as client:
        page = _call(client, "GET", "/v1/datasets")
    table = listing(console, [d["id"] for d in page["items"]], "name", "rows", "target", "created")
    for d in page["items"]:
        add(table, {"id": d["id"], "name": d["name"], "rows": str(d["rows"]),
                    "target": d["target"] or "", "created": when(d["created_at"])})  # fmt: skip
    console.print(table)


def register(app: typer.Typer) -> None:
    for command in (submit, jobs, show, cancel, delete, logs, rerun, predict):
        app.command()(command)
    app.add_typer(datasets_app, name="datasets")
