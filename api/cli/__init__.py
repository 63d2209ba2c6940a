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

import inspect
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperOption

from api.cli import commands, gc, local, serve, sweeps
from api.cli.keys import keys_app

app = typer.Typer(
    help="gradq: train MLPs with a hand-written, gradient-checked backprop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import PackageNotFoundError, version

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
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="the folder of the service's state (database, MLflow store), shared by "
            "every command [$GRADQ_HOME, ./gradq-data]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """gradq: train MLPs with a hand-written, gradient-checked backprop."""
    if home is not None:  # read by the settings of every command (api.settings.Settings.home)
        os.environ["GRADQ_HOME"] = str(home)


def _mount_db() -> None:
    try:
        from db.cli import db_app
    except ImportError:  # the queue is optional for local training
        return
    app.add_typer(db_app, name="db")


def _summaries(group: typer.Typer) -> None:
    """Each command's line in its group's help: its docstring's first paragraph as one line
    (the help panel kept the docstring's line breaks, cutting sentences in the middle)."""
    for info in group.registered_commands:
        doc = info.help or inspect.getdoc(info.callback) or ""
        info.short_help = info.short_help or " ".join(doc.split("\n\n")[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _summaries(sub.typer_instance)


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """No type shown for a flag (``--watch``, not ``--watch <bool>``): it takes no value."""
    return None if self.is_flag else _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

_mount_db()
serve.register(app)
commands.register(app)
gc.register(app)
sweeps.register(app)
app.add_typer(keys_app, name="keys")
local.register(app)
_summaries(app)

__all__ = ["app"]
