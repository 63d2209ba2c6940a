"""README's "First hour", run as written: each command of its ``sh first-hour`` block runs in
bash (the venv's ``gradq`` first on PATH, HOME a fresh folder) against ``gradq --home
~/gradq serve`` started here; each must exit 0 and print what its comment says after ``→``;
none may print a traceback. A line ``VAR=$(command)`` keeps the command's output in VAR for
the lines after it. So the README cannot drift from the command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradq_service import ROOT, Service, running, service_env

pytestmark = pytest.mark.slow

BLOCK = re.compile(r"^```sh first-hour\n(.*?)^```", re.S | re.M)
ASSIGN = re.compile(r"^([A-Z]+)=\$\((.*)\)$")


def walk_through() -> list[tuple[str, str | None]]:
    """(command, what its output must contain) for each line of the README's block(s)."""
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert blocks, "README.md has no ```sh first-hour block"
    lines = []
    for block in blocks:
        for line in block.splitlines():
            command, _, expected = line.partition("# →")
            if command.strip():
                lines.append((command.strip(), expected.strip() or None))
    return lines


@pytest.fixture(scope="module")
def service(folder: Path) -> Iterator[Service]:
    env = service_env(folder, HOME=str(folder))
    del env["GRADQ_DATABASE_URL"], env["GRADQ_MLFLOW_TRACKING_URI"]
    with running(["--home", str(folder / "gradq"), "serve", "--no-mlflow-ui"], folder, env) as s:
        yield s


def test_the_readme_walk_through_runs_as_written(service: Service) -> None:
    env = {**service.env, "GRADQ_URL": service.url, "COLUMNS": "100",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    steps = walk_through()
    assert [c.split()[1] for c, _ in steps if c.startswith("gradq")][:3] == [
        "--version", "gradcheck", "submit"
    ]  # fmt: skip
    for command, expected in steps:
        assign = ASSIGN.match(command)
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", assign.group(2) if assign else command],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        said = f"{command}\n{done.stdout}\n{done.stderr}\n{service.log_tail()}"
        assert done.returncode == 0, said
        assert "Traceback" not in done.stderr, said
        if expected is not None:
            assert expected in done.stdout, said
        if assign:
            env[assign.group(1)] = done.stdout.strip()
            assert re.fullmatch(r"[0-9a-f-]{36}", env[assign.group(1)]), said
    assert (service.folder / "gradq" / "gradq.db").exists()  # ~/gradq: the service's home
