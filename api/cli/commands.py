"""The ``gradq`` commands that talk to the service over HTTP: submit (and watch), jobs, show,
cancel, logs, predict, datasets. ``--url`` defaults to $GRADQ_URL or the address the API listens on
by default (``core.defaults.API_URL``), ``--key`` to $GRADQ_API_KEY."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.cli import chart
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
    import yaml  # here, like every import only some commands need: `gradq cancel` starts sooner

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
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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
        console.print(f"{job['name']}: {outcome(result)}", highlight=False)
        if result.get("gradchecks"):
            console.print(result["gradchecks"], highlight=False, soft_wrap=True)
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
    ids: Annotated[bool, typer.Option("--ids", help="only the ids, one a line")] = False,
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
    if ids:  # for a script: JOB=$(gradq jobs --name digits --ids --limit 1)
        for j in page["items"]:
            typer.echo(j["id"])
        return
    if not page["items"]:
        filtered = params.keys() - {"limit", "sort"}
        typer.echo("no jobs" + (" matching" if filtered else ""))
        return
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
    job_id: Annotated[str, typer.Argument(help="the job to run again: its id, or its start")],
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
        created = _call(client, "POST", f"/v1/jobs/{resolve(client, job_id)}/rerun", json=patch)
    typer.echo(created["id"])


def spec_patch(settings: list[str]) -> dict[str, Any]:
    """The JSON merge patch of ``--set PATH=VALUE`` options (dotted paths, YAML values);
    exits 2 naming an option that is not one."""
    import yaml

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


JobRef = Annotated[str, typer.Argument(help="the job's id, or its first characters")]


def resolve(client: ApiClient, ref: str) -> str:
    """The id of the caller's job ``ref`` names: a whole id, or the start of one (as the
    lists show, `73b1eec8`), looked up among the caller's jobs only. No job or several:
    exit 1 naming the candidates."""
    ref = ref.strip()
    if len(ref) >= 36 or not re.fullmatch(r"[0-9a-fA-F-]+", ref):
        return ref  # a whole id (or not an id at all: the service says it is not found)
    page = _call(client, "GET", "/v1/jobs", params={"id_prefix": ref, "limit": AMBIGUOUS + 1})
    found = page["items"]
    if len(found) == 1:
        return str(found[0]["id"])
    if not found:
        err.print(f"[red]no job of yours has an id starting with {escape(ref)}[/]")
        raise typer.Exit(1)
    more = "at least " if len(found) > AMBIGUOUS else ""
    err.print(f"[red]{escape(ref)} is ambiguous: {more}{len(found)} jobs start with it[/]")
    for j in found[:AMBIGUOUS]:
        err.print(f"  {j['id']}  {escape(j['name'])}  {j['status']}", highlight=False)
    err.print("give more of the id")
    raise typer.Exit(1)


AMBIGUOUS = 10  # candidates an ambiguous prefix lists


def outcome(result: dict[str, Any]) -> str:
    """How a job's training ended, e.g. ``early_stopped after 14 epochs, best epoch 4``."""
    text = f"{result.get('stopped') or 'ended'} after {result.get('epochs')} epochs"
    if result.get("best_epoch") is not None:
        text += f", best epoch {result['best_epoch']}"
    return text


def show(
    job_id: JobRef,
    as_json: Annotated[bool, typer.Option("--json", help="the whole job, as JSON")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """One job: status, progress, result, links (--json: everything, as JSON)."""
    with ApiClient(url, key) as client:
        job = _call(client, "GET", f"/v1/jobs/{resolve(client, job_id)}")
    if as_json:
        console.print_json(json.dumps(job))
        return
    attempts = f"attempt {job['attempt']} of {job['max_attempts']}"
    rows = [("job", f"{job['id']}  {job['name']}"), ("status", f"{job['status']} ({attempts})")]
    if job["status"] == "queued":
        rows.append(("waiting", job.get("pending_reason") or "queued"))
    p = job.get("progress") or {}
    if p:
        rows.append(("progress", f"epoch {p.get('epoch', 0)}/{p.get('epochs', '?')}  "
                     + _bar(job)["metrics"]))  # fmt: skip
    result = job.get("result") or {}
    if result:
        rows.append(("result", outcome(result)))
        for k, v in (result.get("metrics") or {}).items():
            rows.append(("", f"{k} {'-' if v is None else f'{v:.4f}'}"))
        if result.get("gradchecks"):
            rows.append(("checks", result["gradchecks"]))
    if job.get("error"):
        rows.append(("error", _error_text(job["error"])))
    links = job.get("links") or {}
    if links.get("mlflow_run"):
        rows.append(("MLflow", links["mlflow_run"]))
    rows.append(("curves", f"gradq metrics {job['id'][:8]}"))
    for label, value in rows:
        console.print(f"{label:<9} {value}", highlight=False, markup=False, soft_wrap=True)


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        kind, message = error.get("type"), error.get("message", error)
        return f"{kind}: {message}" if kind else str(message)
    return str(error)


def cancel(
    job_id: JobRef,
    wait: Annotated[
        float, typer.Option(min=0, help="seconds to wait for a running job to stop")
    ] = 10.0,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Cancel a job: a queued one at once; a running one stops between two steps, which the
    command waits for (--wait seconds at most) and then prints the job's status."""
    with ApiClient(url, key) as client:
        job = _call(client, "POST", f"/v1/jobs/{resolve(client, job_id)}/cancel")
        deadline = time.monotonic() + wait
        while job["status"] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(CANCEL_POLL_SECONDS)
            job = _call(client, "GET", f"/v1/jobs/{job['id']}")
    note = " (cancel requested; still stopping)" if job["status"] not in TERMINAL else ""
    typer.echo(f"{job['id']} {job['name']} {job['status']}{note}")


CANCEL_POLL_SECONDS = 0.05


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
    job_id: JobRef,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """The job's status history: each change, its attempt and why; the last says how the
    job ended (its result and gradient checks, or its error)."""
    with ApiClient(url, key) as client:
        ref = resolve(client, job_id)
        events = _call(client, "GET", f"/v1/jobs/{ref}/events")
        job = _call(client, "GET", f"/v1/jobs/{ref}")
    for e in events:
        typer.echo(
            f"{e['at'][:23]}  {e['from_status'] or '-':>9} → {e['to_status']:<9}"
            f"  attempt {e['attempt']}  {e['reason'] or ''}"
        )
    last = (events[-1]["reason"] or "") if events else ""
    result = job.get("result") or {}
    if result and outcome(result) not in last:  # a job that ended before events said so
        typer.echo(f"result: {outcome(result)}")
        if result.get("gradchecks"):
            typer.echo(result["gradchecks"])
    if job.get("error") and _error_text(job["error"])[:100] not in last:
        typer.echo(f"error: {_error_text(job['error'])}")


def metrics(
    job_id: JobRef,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="a metric (loss/val) or section (loss) to chart; repeatable"),
    ] = None,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="every curve as CSV, a row per step")
    ] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """The job's learning curves, charted in the terminal (--csv: the points as CSV)."""
    with ApiClient(url, key) as client:
        ref = resolve(client, job_id)
        body = _call(client, "GET", f"/v1/jobs/{ref}/metrics")
    curves = {
        name: [(p["step"], p["value"]) for p in points] for name, points in body["metrics"].items()
    }
    if as_csv:
        picked = {
            n: c for n, c in curves.items() if not metric or {n, n.split("/")[0]} & set(metric)
        }
        typer.echo(chart.to_csv(picked), nl=False)
        return
    charts = chart.sections(curves, metric or ())
    if not curves:
        typer.echo(f"no learning curves for job {ref} yet (its run has logged no epoch)")
        return
    if not charts:
        err.print(f"[red]no metric {', '.join(metric or ())}; the job has: {', '.join(curves)}[/]")
        raise typer.Exit(1)
    width = max(20, min(70, console.width - 14))
    for section, series in charts.items():
        typer.echo(chart.chart(section, series, width=width))
        typer.echo("")


def predict(
    job_id: Annotated[str, typer.Argument(help="the job's id, or its first characters")],
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
        ref = resolve(client, job_id)
        answer = _call(
            client, "POST", f"/v1/jobs/{ref}/predict", params={"checkpoint": checkpoint},
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
    for command in (submit, jobs, show, cancel, delete, logs, metrics, rerun, predict):
        app.command()(command)
    app.add_typer(datasets_app, name="datasets")
