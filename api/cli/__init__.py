"""The ``gradq`` command (``app``, the console script ``gradq = "api.cli:app"``).

- ``gradq train`` / ``gradcheck``: local training and the gradient check (:mod:`api.cli.local`);
- ``gradq db upgrade``: the migrations (:mod:`db.cli`);
- the service: ``gradq serve`` / ``api`` / ``dispatcher`` (:mod:`api.cli.serve`);
- its clients: ``submit``, ``jobs``, ``show``, ``cancel``, ``logs``, ``predict``, ``datasets``
  (:mod:`api.cli.commands`, over HTTP with :mod:`api.cli.http`); ``sweep submit``, ``sweeps``,
  ``sweep show``, ``sweep cancel`` (:mod:`api.cli.sweeps`);
- ``gradq keys`` (:mod:`api.cli.keys`);
- ``gradq gc``: the retention policy (:mod:`api.cli.gc`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from api.cli import commands, gc, local, serve, sweeps
from api.cli.keys import keys_app

app = typer.Typer(
    help="gradq: train MLPs with a hand-written, gradient-checked backprop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(shown: bool) -> None:
    if shown:
        try:
            typer.echo(f"gradq {version('gradq')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("gradq (not installed: no version)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print gradq's version and exit"
        ),
    ] = False,
) -> None:
    """gradq: train MLPs with a hand-written, gradient-checked backprop."""


def _mount_db() -> None:
    try:
        from db.cli import db_app
    except ImportError:  # the queue is optional for local training
        return
    app.add_typer(db_app, name="db")


_mount_db()
serve.register(app)
commands.register(app)
gc.register(app)
sweeps.register(app)
app.add_typer(keys_app, name="keys")
local.register(app)

__all__ = ["app"]
