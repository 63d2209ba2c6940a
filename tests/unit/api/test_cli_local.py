"""The ``gradq`` commands that run locally, without the service: ``gradcheck`` (its table
whole in an 80-column terminal, and the same report as JSON) and ``train``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from api.cli import app

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits.yaml"


def test_the_table_has_every_tensor_whole_at_80_columns() -> None:
    result = CliRunner().invoke(app, ["gradcheck", str(EXAMPLE)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "…" not in result.output  # no heading or value cut
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    names = [row.split("│")[1].strip() for row in rows]
    assert names == ["W1", "b1", "W2", "b2", "W3", "b3"]  # digits.yaml: hidden [64, 64]
    assert all(row.split("│")[-2].strip() == "yes" for row in rows)
    assert "gradient check passed" in result.output


def test_json_is_the_same_report() -> None:
    result = CliRunner().invoke(app, ["gradcheck", str(EXAMPLE), "--json"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # what it is doing: on stderr
    assert [t["name"] for t in report["tensors"]] == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert report["passed"] is True


def test_train_prints_its_outcome_on_one_line_and_the_final_metrics(tmp_path: Path) -> None:
    job = tmp_path / "quick.yaml"
    job.write_text("name: quick\ndataset: iris\noptimizer: {epochs: 3}\n"
                   "regularization: {early_stopping: {enabled: false}}\n")  # fmt: skip
    result = CliRunner().invoke(app, ["train", str(job)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    steps = 3 * math.ceil(90 / 32)  # iris: 150 rows, 20 % validation, 20 % test; batch 32
    assert f"quick: completed after 3 epochs, {steps} steps, best epoch 3\n" in result.output
    for metric in ("train_loss", "val_accuracy", "test_accuracy"):
        assert metric in result.output


def test_train_sums_up_its_passing_gradient_checks_in_one_line(tmp_path: Path) -> None:
    """A check every 2 steps of 9: five checks (at start, steps 2, 4, 6, 8) said in one
    summary line, not a line each."""
    job = tmp_path / "checked.yaml"
    job.write_text("name: checked\ndataset: iris\noptimizer: {epochs: 3}\n"
                   "gradcheck: {at_start: true, every_steps: 2}\n")  # fmt: skip
    result = CliRunner().invoke(app, ["train", str(job)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "gradient check passed at step" not in result.output
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("gradient checks:")]
    assert line.startswith("gradient checks: 5 of 5 passed (worst relative error: manual vs")


def test_a_jobs_summary_names_its_files_route() -> None:
    """Under keys a job has no MLflow link; its summary still says where its files are."""
    from api.cli.commands import _summary, console

    job = {"id": "j1", "name": "n", "status": "succeeded", "mlflow_run_id": "r1",
           "links": {"mlflow_run": None, "artifacts": "/v1/jobs/j1/artifacts"}}  # fmt: skip
    with console.capture() as captured:
        _summary(job)
    assert "files: /v1/jobs/j1/artifacts\n" in captured.get()
    with console.capture() as captured:
        _summary({**job, "mlflow_run_id": None})
    assert "files:" not in captured.get()


def test_a_local_command_on_an_upload_spec_says_what_to_do_without_a_traceback(
    tmp_path: Path,
) -> None:
    job = tmp_path / "uploaded.yaml"
    job.write_text("name: u\ndataset: {name: upload, id: abc, target: y}\n")
    for command in ("train", "gradcheck"):
        result = CliRunner().invoke(app, [command, str(job)], env={"COLUMNS": "200"})
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "dataset.name: 'upload' is a data set uploaded to a gradq service" in result.output
        assert "`gradq submit`" in result.output and "name: csv, path: FILE" in result.output


def test_a_bad_setting_is_named_as_the_user_set_it() -> None:
    result = CliRunner().invoke(app, ["api"], env={"GRADQ_AUTH": "keyz", "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "GRADQ_AUTH: Input should be 'none' or 'keys' (got 'keyz')" in result.output
    assert "pydantic" not in result.output and "validation error for" not in result.output


def _train(*args: str) -> Any:
    return CliRunner().invoke(app, ["train", *args], env={"COLUMNS": "200"})


def _job(folder: Path, name: str, epochs: int, **optimizer: Any) -> str:
    spec = {"name": name, "dataset": "iris", "seed": 3,
            "optimizer": {"epochs": epochs, "lr": 0.05, **optimizer},
            "regularization": {"early_stopping": {"enabled": False}}}  # fmt: skip
    path = folder / f"{name}-{epochs}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_resume_extends_a_run_whose_schedule_does_not_depend_on_the_epochs(
    tmp_path: Path,
) -> None:
    """4 epochs, then resumed with epochs: 8, ends where 8 straight epochs end (a step
    schedule's rate is a function of the epoch alone)."""
    step = {"schedule": {"kind": "step", "step_size": 3, "gamma": 0.5}}
    first = _train(_job(tmp_path, "run", 4, **step), "--checkpoint-dir", str(tmp_path / "ck"))
    assert first.exit_code == 0, first.output
    more = _train(_job(tmp_path, "run", 8, **step), "--resume", str(tmp_path / "ck/last.pt"),
                  "--json")  # fmt: skip
    assert more.exit_code == 0, more.output
    straight = _train(_job(tmp_path, "run", 8, **step), "--json")
    extended, whole = json.loads(more.output), json.loads(straight.output)
    assert extended["epochs"] == 8 and extended["steps"] == whole["steps"]
    assert extended["metrics"] == whole["metrics"]


def test_resume_refuses_a_cosine_extension_unless_asked_and_names_a_changed_field(
    tmp_path: Path,
) -> None:
    cosine = {"schedule": {"kind": "cosine", "min_lr": 0.001}}
    ck = str(tmp_path / "ck" / "last.pt")
    assert _train(_job(tmp_path, "cos", 3, **cosine), "--checkpoint-dir", str(tmp_path / "ck")
                  ).exit_code == 0  # fmt: skip
    refused = _train(_job(tmp_path, "cos", 6, **cosine), "--resume", ck)
    assert refused.exit_code == 1
    assert "optimizer.epochs: 6 here, 3 in the checkpoint" in refused.output
    assert "--extend-schedule" in refused.output and "Traceback" not in refused.output
    extended = _train(_job(tmp_path, "cos", 6, **cosine), "--resume", ck, "--extend-schedule")
    assert extended.exit_code == 0, extended.output
    assert "cos: completed after 6 epochs" in extended.output
    other = _train(_job(tmp_path, "cos", 3, **{**cosine, "lr": 0.1}), "--resume", ck)
    assert other.exit_code == 1
    assert "differs in: optimizer.lr: 0.05 in the checkpoint, 0.1 here" in other.output
    fewer = _train(_job(tmp_path, "cos", 2, **cosine), "--resume", ck)
    assert "optimizer.epochs: 2, but the checkpoint has trained 3 epochs already" in fewer.output


def test_a_big_models_check_samples_its_finite_differences_and_says_so(tmp_path: Path) -> None:
    """hidden [1024, 1024] on digits: over a million parameters, far over the service's
    limit; the check says what it does first and takes 8 coordinates per tensor (the
    spec's fd_samples), not all of them (which ran for minutes, silently)."""
    job = tmp_path / "big.yaml"
    job.write_text("name: big\ndataset: digits\nmodel: {hidden: [1024, 1024]}\n")
    result = CliRunner().invoke(app, ["gradcheck", str(job)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first == (
        "checking big: 1,126,410 parameters in float64 on 16 rows, finite differences on 8 "
        "sampled coordinates per tensor (--every-coordinate: all of them, slowly)"
    )
    rows = [line.split("│") for line in result.output.splitlines() if line.startswith("│")]
    assert [r[1].strip() for r in rows] == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert {r[7].strip() for r in rows} == {"8"}  # FD coords
    small = CliRunner().invoke(app, ["gradcheck", str(EXAMPLE)], env={"COLUMNS": "200"})
    assert "finite differences on every coordinate" in small.output.splitlines()[0]
