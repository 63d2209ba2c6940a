"""``gradq train job.yaml`` trains locally with a live progress bar; ``gradq gradcheck
job.yaml`` prints the validator's table per layer. Neither needs the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from core import defaults
from core.callbacks import Callback, EpochRecord
from core.gradcheck_summary import checks_summary

if TYPE_CHECKING:  # torch and pydantic are imported only by the commands (a fast start)
    from rich.progress import Progress

    from core.checkpoint import Checkpoint
    from core.gradcheck import GradcheckReport
    from core.spec import JobSpec

console = Console()
err = Console(stderr=True)


def _load(job: Path) -> JobSpec:
    from core.spec import InvalidSpec, load_spec

    try:
        spec = load_spec(job)
    except InvalidSpec as exc:
        err.print(f"[bold red]invalid job spec[/] {job}:")
        for e in exc.errors:
            err.print(f"  [yellow]{e.field}[/]: {e.message}")
        raise typer.Exit(2) from None
    if spec.dataset.name == "upload":
        err.print(f"[bold red]cannot run[/] {job} [bold red]here:[/]", highlight=False)
        err.print(f"  [yellow]dataset.name[/]: {UPLOAD_HERE}", highlight=False)
        raise typer.Exit(2)
    return spec


UPLOAD_HERE = (
    "'upload' is a data set uploaded to a gradq service, which this command (local, "
    "without the service) cannot read: train it there with `gradq submit`, or name the "
    "local file with `dataset: {name: csv, path: FILE, target: COLUMN}`"
)


class ProgressCallback(Callback):
    """A live bar: epoch of epochs, losses and the validation score."""

    def __init__(self, progress: Progress, epochs: int) -> None:
        self.progress = progress
        self.task = progress.add_task("training", total=epochs, metrics="")

    def on_train_start(
        self, *, spec: JobSpec, engine: str, device: str, n_train: int, resumed_epoch: int
    ) -> None:
        self.progress.update(
            self.task, completed=resumed_epoch, description=f"{spec.name} [{engine}, {device}]"
        )

    def on_epoch_end(self, record: EpochRecord) -> None:
        score = (
            f"val acc {record.val['accuracy']:.4f}"
            if "accuracy" in record.val
            else f"val rmse {record.val.get('rmse', float('nan')):.4g}"
        )
        val_loss = record.val.get("loss", float("nan"))
        text = f"loss {record.train['loss']:.4f}  val loss {val_loss:.4f}  {score}"
        self.progress.update(self.task, completed=record.epoch, metrics=text)

    def on_gradcheck(self, report: GradcheckReport) -> None:
        """A failed check is printed at once (the job stops on it); passing ones are counted
        for the summary after training (``checks_summary``)."""
        if not report.passed:
            self.progress.console.print(f"[red]{report.summary()}[/]")


class CheckpointWriter(Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        checkpoint.save(self.folder / "last.pt")


def train(
    job: Annotated[Path, typer.Argument(help="the job spec, YAML or JSON")],
    checkpoint_dir: Annotated[Path | None, typer.Option(help="write last.pt here")] = None,
    resume: Annotated[Path | None, typer.Option(help="resume from this checkpoint")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    extend_schedule: Annotated[
        bool,
        typer.Option(
            "--extend-schedule",
            help="with --resume and more epochs: recompute a cosine schedule over them",
        ),
    ] = False,
) -> None:
    """Train a job locally, without the service, with a live progress bar. With --resume,
    the spec may ask for more epochs than the checkpoint's run (a run extended)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from core.checkpoint import Checkpoint, CheckpointError
    from core.gradcheck import GradcheckFailed
    from core.spec import InvalidSpec
    from core.train import Diverged
    from core.train import train as run

    spec = _load(job)
    try:
        start = Checkpoint.load(resume) if resume else None
    except CheckpointError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    callbacks: list[Callback] = [CheckpointWriter(checkpoint_dir)] if checkpoint_dir else []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err, disable=as_json) as progress:
            callbacks.append(ProgressCallback(progress, spec.optimizer.epochs))
            result = run(
                spec, callbacks=callbacks, resume_from=start, extend_schedule=extend_schedule
            )
    except (Diverged, GradcheckFailed, CheckpointError, InvalidSpec) as exc:
        err.print(f"[bold red]failed:[/] {exc}")
        raise typer.Exit(1) from None
    summary: dict[str, Any] = {
        "status": result.status,
        "engine": result.engine,
        "device": result.device,
        "epochs": result.epochs,
        "steps": result.steps,
        "best_epoch": result.best_epoch,
        "metrics": result.metrics,
    }
    if as_json:
        console.print_json(json.dumps(summary))
        return
    best = f", best epoch {result.best_epoch}" if result.best_epoch is not None else ""
    # a line of its own: as the narrow table's title it wrapped
    console.print(
        f"{spec.name}: {result.status} after {result.epochs} epochs, {result.steps} steps{best}",
        highlight=False,
    )
    checks = checks_summary(result.gradchecks)
    if checks is not None:
        console.print(checks, highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)


def gradcheck(
    job: Annotated[Path, typer.Argument(help="the job spec, YAML or JSON")],
    batch: Annotated[int, typer.Option(help="rows of the training data to check on")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    every_coordinate: Annotated[
        bool,
        typer.Option(
            "--every-coordinate",
            help="finite differences on every parameter, also of a model over "
            f"{defaults.GRADCHECK_MAX_PARAMETERS:,} parameters (slow)",
        ),
    ] = False,
) -> None:
    """Check the manual backprop against autograd and finite differences, per layer. Over
    the service's limit of parameters, the finite differences take a sample of each tensor's
    coordinates, as the service's check does."""
    from core.gradcheck import check_spec
    from core.spec import estimated_parameters

    spec = _load(job)
    n = estimated_parameters(spec)
    fd = None  # every coordinate
    if n > defaults.GRADCHECK_MAX_PARAMETERS and not every_coordinate:
        fd = min(spec.gradcheck.fd_samples, defaults.GRADCHECK_FD_SAMPLES)
    coordinates = "every coordinate" if fd is None else f"{fd} sampled coordinates per tensor"
    err.print(
        f"checking {spec.name}: {n:,} parameters in float64 on {batch} rows, finite "
        f"differences on {coordinates}"
        + (" (--every-coordinate: all of them, slowly)" if fd is not None else ""),
        highlight=False,
    )
    report = check_spec(spec, batch_size=batch, fd_samples=fd)
    if as_json:
        console.print_json(report.to_json())
    else:
        table = Table(
            title=f"gradient check of {spec.name} (float64, batch {report.batch})",
            caption="|Δ|: largest |manual − reference|; rel: relative error; "
            "FD: central finite differences on the coordinates counted",
        )
        # two-line headings: the table fits an 80-column terminal without cutting them
        for col in ("tensor", "shape", "|Δ|\nautograd", "rel\nautograd", "|Δ|\nFD", "rel\nFD",
                    "FD\ncoords", "ok"):  # fmt: skip
            table.add_column(col, justify="right", no_wrap=True)
        for t in report.tensors:
            table.add_row(
                t.name,
                "×".join(map(str, t.shape)),
                f"{t.autograd_max_abs:.2e}",
                f"{t.autograd_rel:.2e}",
                f"{t.fd_max_abs or 0:.2e}",
                f"{t.fd_rel or 0:.2e}",
                str(t.fd_coordinates),
                "[green]yes[/]" if t.passed else "[red]NO[/]",
            )
        console.print(table)
        console.print(report.summary())
    if not report.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(gradcheck)
