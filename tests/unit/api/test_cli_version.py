"""``gradq --version``: what a user types first to report what they run."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from api.cli import app


def test_version_prints_the_installed_version_and_exits_0() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"gradq {version('gradq')}\n"
    assert "Traceback" not in result.output
