"""The ``gradq`` sweep commands, over HTTP like the job commands (:mod:`api.cli.commands`):
``sweep submit FILE [--watch]``, ``sweeps``, ``sweep show ID``, ``sweep cancel ID``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from api.cli.commands import KeyOpt, UrlOpt, _call, console, err, fail, read_yaml
from api.cli.http import ApiClient, ApiFailure
from api.cli.tables import WIDE, add, listing, when

sweep_app = typer.Typer(help="Sweeps: search a space of job specs.", no_args_is_help=True)

TERMINAL = ("succeeded", "failed", "cancelled")
COUNTS = ("queued", "running", "succeeded", "pruned", "failed", "cancelled")
WATCH_POLL_SECONDS = 1.0
WATCH_TOP = 10  # trials in the watch's table
PAGE = 100  # trials asked for per request by `sweep show`
LIST_WIDE = 120  # `gradq sweeps` shows "created" from this many columns (names stay whole)
AWAY = (0, 502, 503, 504)  # the service unreachable or restarting: the watch keeps polling
STYLES = {"succeeded": "green", "failed": "red", "running": "cyan", "pruned": "yellow"}


@sweep_app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(help="the sweep, YAML or JSON")],
    watch: Annotated[bool, typer.Option("--watch", help="follow it to the end")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Submit a sweep; prints its id. With --watch: a live table (trials by status, the best
    so far with its parameters, the best trials), then one line; the exit status is 1 when
    the sweep did not succeed. Ctrl-C stops watching; the sweep keeps running."""
    spec = read_yaml(file)
    if not isinstance(spec, dict):
        err.print(
            f"[red]{escape(str(file))}: a sweep is a mapping (name, base, space, search, "
            f"objective, early_stopping), not {type(spec).__name__}[/]",
            highlight=False,
        )
        raise typer.Exit(2)
    with ApiClient(url, key) as client:
        created = _call(client, "POST", "/v1/sweeps", json=spec)
        typer.echo(created["id"])
        if not watch:
            return
        final = _watch(client, created["id"])
    _end_line()
    console.print(_outcome(final), markup=False, highlight=False, soft_wrap=True)
    if final["status"] != "succeeded":
        raise typer.Exit(1)


def _watch(client: ApiClient, sweep_id: str) -> dict[str, Any]:
    """Poll the sweep and its best trials until it is terminal, showing both."""
    from rich.live import Live

    problem = None
    try:
        with Live(Text(f"sweep {sweep_id}"), console=err, auto_refresh=False) as live:
            while True:
                try:
                    sweep = client.call("GET", f"/v1/sweeps/{sweep_id}")
                    top = client.call("GET", f"/v1/sweeps/{sweep_id}/trials",
                                      params={"sort": "objective", "limit": WATCH_TOP})  # fmt: skip
                except ApiFailure as exc:
                    if exc.status not in AWAY:
                        fail(exc)
                    if exc.message != problem:  # said once while it lasts
                        live.console.print(
                            f"[yellow]{escape(exc.message)}; still watching[/]", highlight=False
                        )
                    problem = exc.message
                else:
                    problem = None
                    live.update(_view(sweep, top["items"]), refresh=True)
                    if sweep["status"] in TERMINAL:
                        return sweep
                time.sleep(WATCH_POLL_SECONDS)
    except KeyboardInterrupt:
        _end_line()
        err.print(
            f"stopped watching: sweep {sweep_id} keeps running (gradq sweep show {sweep_id}; "
            f"gradq sweep cancel {sweep_id} stops it)",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(130) from None


def _end_line() -> None:
    """End the live table's last line where no terminal does (output to a file or pipe)."""
    if not err.is_terminal:
        err.line()


def _view(sweep: dict[str, Any], top: list[dict[str, Any]]) -> Group:
    status = sweep["status"]
    header = Text.assemble(
        f"sweep {sweep['id']} {sweep['name']} ",
        (status, STYLES.get(status, "")),
        f" · {_made(sweep)} trials",
    )
    lines = [Text(line) for line in (_counts(sweep), *_best(sweep))]
    return Group(header, *lines, _trials_table(sweep, top, with_ids=False))


@sweep_app.command("show")
def show(
    sweep_id: Annotated[str, typer.Argument(help="the sweep's id")],
    limit: Annotated[int, typer.Option(help="at most this many trials, the best first")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="the sweep and its trials")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """A sweep: its settings, trials by status, the best so far, its trials by objective
    (with their job ids in a terminal of 100 columns or more, or with --json)."""
    with ApiClient(url, key) as client:
        sweep = _call(client, "GET", f"/v1/sweeps/{sweep_id}")
        trials, more = _trials(client, sweep_id, limit)
    if as_json:
        console.print_json(json.dumps({"sweep": sweep, "trials": trials}))
        return
    spec = sweep.get("spec") or {}
    search = spec.get("search") or {}
    stopping = dict(spec.get("early_stopping") or {"kind": "none"})
    kind = stopping.pop("kind", "none")
    finished = f", finished {when(sweep['finished_at'])}" if sweep.get("finished_at") else ""
    lines = [
        f"sweep {sweep['id']} {sweep['name']} {sweep['status']}",
        f"created {when(sweep['created_at'])}{finished}",
        f"search: {search.get('method', '?')}, {sweep['trials']} trials made"
        + (f" of {_total(sweep)}" if _total(sweep) else "")
        + (f", {search['parallel']} at once" if search.get("parallel") else ""),
        "objective: {} ({})".format(*_objective(sweep)),
        f"early stopping: {kind}"
        + (f" ({', '.join(f'{k} {v}' for k, v in stopping.items())})" if stopping else ""),
        _counts(sweep),
        *_best(sweep),
    ]
    if sweep.get("error"):
        lines.append(f"error: {sweep['error']}")
    for note in sweep.get("notes") or []:  # sampled points that made no valid spec
        if isinstance(note, dict) and "trial" in note:
            lines.append(f"note: trial {note['trial']}: {note.get('message')}")
        else:
            lines.append(f"note: {note}")
    if sweep.get("mlflow_run_id"):
        lines.append(f"MLflow run: {sweep['mlflow_run_id']}")
    for line in lines:
        console.print(line, markup=False, highlight=False)
    if trials:
        console.print(_trials_table(sweep, trials, with_ids=True))
    else:
        console.print("no trials yet")
    if more:
        console.print(f"the {len(trials)} best of {sweep['trials']} trials; --limit for more")


def _trials(client: ApiClient, sweep_id: str, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` trials, the best first, and whether there are more."""
    items: list[dict[str, Any]] = []
    cursor = None
    while len(items) < limit:
        params: dict[str, Any] = {"sort": "objective", "limit": min(PAGE, limit - len(items))}
        if cursor:
            params["cursor"] = cursor
        page = _call(client, "GET", f"/v1/sweeps/{sweep_id}/trials", params=params)
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return items, cursor is not None


@sweep_app.command("cancel")
def cancel(
    sweep_id: Annotated[str, typer.Argument(help="the sweep's id")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Cancel a sweep: its queued trials are cancelled, its running ones stop."""
    with ApiClient(url, key) as client:
        sweep = _call(client, "POST", f"/v1/sweeps/{sweep_id}/cancel")
    note = "" if sweep["status"] in TERMINAL else " (cancel requested: its trials stopping)"
    typer.echo(f"{sweep['id']} {sweep['status']}{note}")


def sweeps(
    status: Annotated[str | None, typer.Option(help="only this status")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="KEY:VALUE, e.g. team:vision; repeat for all of them")
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 20,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Your sweeps, newest first."""
    given = {"status": status, "tag": tag, "limit": limit}
    params = {k: v for k, v in given.items() if v}
    with ApiClient(url, key) as client:
        page = _call(client, "GET", "/v1/sweeps", params=params)
    ids = [s["id"] for s in page["items"]]
    table = listing(console, ids, "name", "status", "trials", "best", "created", wide=LIST_WIDE)
    for s in page["items"]:
        best = s.get("best") or {}
        add(table, {"id": s["id"], "name": s["name"], "status": s["status"],
                    "trials": _made(s, "/"), "best": _number(best.get("objective")),
                    "created": when(s["created_at"])})  # fmt: skip
    console.print(table)


# --- what the commands show --------------------------------------------------------------------


def _made(sweep: dict[str, Any], of: str = " of ") -> str:
    """Trials made so far, and of how many when that is known."""
    total = _total(sweep)
    return f"{sweep['trials']}{of}{total}" if total else str(sweep["trials"])


def _total(sweep: dict[str, Any]) -> int | None:
    """The trials the sweep makes in all: the service's ``total_trials``, or the search's."""
    search = (sweep.get("spec") or {}).get("search") or {}
    total = sweep.get("total_trials") or search.get("trials")
    return total if isinstance(total, int) else None


def _counts(sweep: dict[str, Any]) -> str:
    counts = sweep.get("counts") or {}
    return " · ".join(f"{status} {counts.get(status, 0)}" for status in COUNTS)


def _objective(sweep: dict[str, Any]) -> tuple[str, str]:
    """The objective's metric and mode (min or max)."""
    objective = (sweep.get("spec") or {}).get("objective") or {}
    return objective.get("metric", "objective"), objective.get("mode", "?")


def _best(sweep: dict[str, Any]) -> list[str]:
    best = sweep.get("best")
    if not best:
        return ["best: none yet"]
    metric, mode = _objective(sweep)
    return [
        f"best: trial {best['trial']} {metric} {_number(best['objective'])} ({mode})",
        f"  job {best['job_id']}",
        f"  {_params(best.get('params') or {})}",
    ]


def _outcome(sweep: dict[str, Any]) -> str:
    """The watch's last line: status, trials by status, the best, the error."""
    counts = sweep.get("counts") or {}
    by_status = ", ".join(f"{counts[s]} {s}" for s in COUNTS if counts.get(s))
    line = f"sweep {sweep['id']} {sweep['status']}: {sweep['trials']} trials"
    line += f" ({by_status})" if by_status else ""
    best = sweep.get("best")
    if best:
        metric = _objective(sweep)[0]
        line += f"; best trial {best['trial']} {metric} {_number(best['objective'])}"
        line += f" (job {best['job_id']}) {_params(best.get('params') or {})}"
    if sweep.get("error"):
        line += f"; {sweep['error']}"
    return line


def _trials_table(sweep: dict[str, Any], trials: list[dict[str, Any]], with_ids: bool) -> Table:
    """Trials by objective; parameters named by their last part where that is unambiguous."""
    metric = _objective(sweep)[0]
    columns = ("trial", "status", "epoch", metric, "params")
    if with_ids and console.width >= WIDE:
        table = listing(console, [t["id"] for t in trials], *columns)
    else:  # the watch, or a narrow terminal, where the ids would leave the parameters no room
        with_ids = False
        table = Table(*columns[:-1])
        table.add_column("params", overflow="fold")
    paths = list(((sweep.get("spec") or {}).get("space") or {}).keys())
    for t in trials:
        paths += [p for p in t.get("params") or {} if p not in paths]
    short = _short_names(paths)
    for t in trials:
        params = {short[p]: v for p, v in (t.get("params") or {}).items()}
        epoch = t.get("epoch")
        row = {"id": t["id"], "trial": str(t["trial"]), "status": t["status"],
               "epoch": "" if epoch is None else str(epoch),
               metric: _number(t.get("objective")), "params": _params(params)}  # fmt: skip
        if with_ids:
            add(table, row)
        else:
            table.add_row(*(row[c] for c in columns))
    return table


def _short_names(paths: list[str]) -> dict[str, str]:
    """``optimizer.lr`` → ``lr``, unless two paths end alike."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: s if last.count(s) == 1 else p for p, s in zip(paths, last, strict=True)}


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in params.items())


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))  # one word


def _number(v: float | None) -> str:
    """An objective: 4 decimals, or 4 significant digits where decimals would hide it."""
    if v is None:
        return "-"
    return f"{v:.4f}" if v == 0 or 1e-2 <= abs(v) < 1e6 else f"{v:.4g}"


def register(app: typer.Typer) -> None:
    app.command()(sweeps)
    app.add_typer(sweep_app, name="sweep")
