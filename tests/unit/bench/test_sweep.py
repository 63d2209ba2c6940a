"""bench/sweep.py: the sampled configurations every runner trains, the specs it sends, how a
run's figures are summed up, and the ratio and target tables."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))

import sweep  # noqa: E402

from core.spec import parse_spec  # noqa: E402
from core.sweep import parse_sweep  # noqa: E402


def test_configs_are_drawn_once_from_the_seed_within_the_ranges() -> None:
    configs = sweep.sample_configs(32, seed=0)
    assert configs == sweep.sample_configs(32, seed=0)
    assert configs != sweep.sample_configs(32, seed=1)
    assert len({c["lr"] for c in configs}) == 32
    for c in configs:
        assert sweep.LR_RANGE[0] <= c["lr"] <= sweep.LR_RANGE[1]
        assert sweep.WD_RANGE[0] <= c["weight_decay"] <= sweep.WD_RANGE[1]
    # log-uniform: about half of the points below the geometric middle of the lr range
    middle = math.sqrt(sweep.LR_RANGE[0] * sweep.LR_RANGE[1])
    many = sweep.sample_configs(2000, seed=0)
    assert 0.45 < sum(c["lr"] < middle for c in many) / len(many) < 0.55


def test_ray_tune_and_the_loop_train_the_same_specs_in_the_same_order() -> None:
    configs = sweep.sample_configs(5, seed=3)
    space = sweep.tune_param_space(configs)
    from ray import tune  # the bench extra

    assert space == {"trial": tune.grid_search(configs)}
    tune_specs = [sweep.trial_spec(c) for c in space["trial"]["grid_search"]]
    loop_specs = [sweep.trial_spec(c) for c in configs]
    assert tune_specs == loop_specs
    assert [s["optimizer"]["lr"] for s in loop_specs] == [c["lr"] for c in configs]


def test_a_trial_spec_is_the_issue_s_job_with_its_lr_and_weight_decay() -> None:
    spec = parse_spec(sweep.trial_spec({"lr": 0.123, "weight_decay": 4.5e-5}, epochs=20))
    assert spec.dataset.name == "digits"
    assert spec.model.hidden == [64, 64]
    assert spec.optimizer.batch_size == 32
    assert spec.optimizer.epochs == 20
    assert spec.optimizer.momentum == 0.9
    assert spec.optimizer.lr == 0.123
    assert spec.regularization.weight_decay == 4.5e-5
    assert spec.regularization.early_stopping.enabled is False
    assert spec.resources.cpus == 1


def test_the_sweep_spec_searches_the_same_ranges_from_the_same_base() -> None:
    off = sweep.sweep_spec(trials=32, epochs=20, seed=7, parallel=2, asha=False)
    on = sweep.sweep_spec(trials=32, epochs=20, seed=7, parallel=2, asha=True)
    assert off["space"] == {
        "optimizer.lr": {"loguniform": list(sweep.LR_RANGE)},
        "regularization.weight_decay": {"loguniform": list(sweep.WD_RANGE)},
    }
    assert off["search"] == {
        "method": "random", "trials": 32, "parallel": 2, "seed": 7, "max_failed": 32,
        "pack": False,
    }  # fmt: skip
    packed = sweep.sweep_spec(trials=32, epochs=20, seed=7, parallel=2, asha=False, pack=True)
    assert packed["search"] == {**off["search"], "pack": True}
    assert {k: v for k, v in packed.items() if k not in ("search", "name")} == {
        k: v for k, v in off.items() if k not in ("search", "name")
    }
    assert parse_sweep(packed).spec.search.pack and not parse_sweep(off).spec.search.pack
    assert off["objective"] == {"metric": "val_accuracy", "mode": "max"}
    assert off["early_stopping"] == {"kind": "none"}
    assert on["early_stopping"] == {"kind": "asha", "min_epochs": 2, "reduction_factor": 3}
    assert on["base"] == off["base"]
    # the base is a trial's spec less what the space sets, and a valid job spec itself
    trial = sweep.trial_spec({"lr": 0.01, "weight_decay": 1e-4}, epochs=20)
    del trial["optimizer"]["lr"], trial["regularization"]["weight_decay"]
    assert {**off["base"], "name": trial["name"]} == trial
    parse_spec(off["base"])


def test_a_curve_gives_the_trial_s_epochs_and_its_best_accuracy() -> None:
    t = sweep.Trial.from_curve({"lr": 0.1, "weight_decay": 1e-3}, [0.5, 0.9, 0.8], "pruned")
    assert (t.epochs, t.best, t.status) == (3, 0.9, "pruned")
    none = sweep.Trial.from_curve({"lr": 0.1, "weight_decay": 1e-3}, [None, math.nan], "failed")
    assert (none.epochs, none.best) == (2, None)


def run(name: str, wall: float, epochs: list[int], best: list[float | None]) -> sweep.Run:
    trials = [
        sweep.Trial(lr=0.01, weight_decay=1e-4, epochs=e, best=b, status="succeeded")
        for e, b in zip(epochs, best, strict=True)
    ]
    return sweep.Run(name=name, wall_s=wall, trials=trials)


def test_a_run_sums_epochs_and_takes_the_best_of_its_trials() -> None:
    r = run("loop", 2.0, [20, 20, 4], [0.9, None, 0.95])
    assert r.epochs == 44
    assert r.best == 0.95
    assert r.trials_per_s == 1.5
    assert r.statuses == {"succeeded": 3}


def test_ratios_are_against_ray_tune_with_the_same_scheduler() -> None:
    runs = [
        run("tune", 80.0, [20] * 4, [0.96, 0.9, 0.1, 0.95]),
        run("tune-asha", 40.0, [20, 2, 2, 6], [0.97, 0.5, 0.1, 0.9]),
        run("sweep", 4.0, [20] * 4, [0.955, 0.9, 0.1, 0.8]),
        run("sweep-asha", 2.0, [20, 2, 2, 2], [0.95, 0.5, 0.1, 0.2]),
    ]
    rows = {r["name"]: r for r in sweep.ratio_rows(runs)}
    assert rows["tune"]["speed_x"] == 1.0
    assert rows["sweep"]["anchor"] == "tune"
    assert rows["sweep"]["speed_x"] == pytest.approx(20.0)
    assert rows["sweep"]["epochs_x"] == 1.0
    assert rows["sweep"]["best_delta_points"] == pytest.approx(-0.5)
    assert rows["sweep-asha"]["anchor"] == "tune-asha"
    assert rows["sweep-asha"]["speed_x"] == pytest.approx(20.0)
    assert rows["sweep-asha"]["epochs_x"] == pytest.approx(26 / 30)
    assert rows["sweep-asha"]["best_delta_points"] == pytest.approx(-2.0)


def test_without_its_anchor_a_row_has_no_ratios() -> None:
    rows = sweep.ratio_rows([run("loop", 7.0, [20], [0.9])])
    assert rows[0]["anchor"] is None
    assert rows[0]["speed_x"] is None and rows[0]["epochs_x"] is None


def test_targets_are_judged_on_the_runs_of_one_bench() -> None:
    runs = [
        run("tune", 80.0, [20] * 4, [0.96, 0.9, 0.1, 0.95]),
        run("sweep", 5.0, [20] * 4, [0.955, 0.9, 0.1, 0.8]),  # 16x Ray Tune
        run("sweep-asha", 2.0, [20, 2, 2, 2], [0.951, 0.5, 0.1, 0.2]),  # 80 / 26 epochs
    ]
    targets = {t["name"]: t for t in sweep.target_rows(runs)}
    speed = targets["gradq sweep without ASHA: trials/s over Ray Tune's"]
    assert (speed["measured"], speed["met"]) == (pytest.approx(16.0), True)
    fewer = targets["gradq sweep: epochs without ASHA over with ASHA"]
    assert (fewer["measured"], fewer["met"]) == (pytest.approx(80 / 26), True)
    close = targets["gradq sweep: best accuracy, with ASHA less without (points)"]
    assert (close["measured"], close["met"]) == (pytest.approx(-0.4), True)

    slow = [runs[0], run("sweep", 6.0, [20] * 4, [0.955, 0.9, 0.1, 0.8]), runs[2]]
    assert not sweep.target_rows(slow)[0]["met"]  # 13.3x
    worse = [*runs[:2], run("sweep-asha", 2.0, [20, 2, 2, 2], [0.94, 0.5, 0.1, 0.2])]
    assert not sweep.target_rows(worse)[2]["met"]  # 1.5 points below
    lazy = [*runs[:2], run("sweep-asha", 2.0, [20, 20, 2, 2], [0.955, 0.5, 0.1, 0.2])]
    assert not sweep.target_rows(lazy)[1]["met"]  # 80 / 44 epochs


def test_a_target_whose_runs_are_missing_is_not_judged() -> None:
    targets = sweep.target_rows([run("tune", 80.0, [20], [0.9])])
    assert len(targets) == 3 + 3 * len(sweep.PACKED_OF)
    assert all(t["met"] is None and t["measured"] is None for t in targets)


def test_a_packed_row_is_judged_against_the_same_sweep_unpacked_and_ray_tune() -> None:
    runs = [
        run("tune", 100.0, [20] * 4, [0.96, 0.9, 0.1, 0.95]),  # 0.04 trials/s
        run("sweep", 4.0, [20] * 4, [0.955, 0.9, 0.1, 0.8]),  # 1 trial/s
        run("sweep-packed", 1.0, [20] * 4, [0.95, 0.9, 0.1, 0.8]),  # 4 trials/s: 100x Tune
        run("sweep-big", 16.0, [20] * 8, [0.97] * 8),  # 0.5 trial/s
        run("sweep-big-packed", 8.0, [20] * 8, [0.955] * 8),  # 2x unpacked, 25x Tune, -1.5
    ]
    for t in runs[2].trials:
        t.pack = 4
    rows = {r["name"]: r for r in sweep.ratio_rows(runs)}
    assert rows["sweep-packed"]["unpacked"] == "sweep"
    assert rows["sweep-packed"]["unpacked_speed_x"] == pytest.approx(4.0)
    assert rows["sweep-packed"]["unpacked_delta_points"] == pytest.approx(-0.5)
    assert rows["sweep-packed"]["speed_x"] == pytest.approx(100.0)
    assert rows["sweep-packed"]["packs"] == {4: 4}
    assert rows["sweep"]["unpacked"] is None and rows["sweep"]["unpacked_speed_x"] is None
    assert rows["sweep-big-packed"]["unpacked"] == "sweep-big"
    targets = {t["name"]: t for t in sweep.target_rows(runs)}
    small = "gradq sweep packed (4 trials)"
    assert targets[f"{small}: trials/s over the same sweep unpacked"]["met"] is True
    assert targets[f"{small}: trials/s over Ray Tune's"]["measured"] == pytest.approx(100.0)
    assert targets[f"{small}: trials/s over Ray Tune's"]["met"] is True
    assert targets[f"{small}: best accuracy less unpacked (points)"]["met"] is True
    big = "gradq sweep packed (8 trials)"
    assert targets[f"{big}: trials/s over the same sweep unpacked"]["measured"] == 2.0
    assert targets[f"{big}: trials/s over the same sweep unpacked"]["met"] is False
    assert targets[f"{big}: trials/s over Ray Tune's"]["measured"] == pytest.approx(25.0)
    assert targets[f"{big}: trials/s over Ray Tune's"]["met"] is False  # under ~50x
    assert targets[f"{big}: best accuracy less unpacked (points)"]["met"] is False


def test_the_report_prints_every_run_and_target(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        run("tune", 80.0, [20] * 4, [0.96, 0.9, 0.1, 0.95]),
        sweep.Run(name="sweep", wall_s=None, trials=[], error="no /v1/sweeps on this server"),
    ]
    sweep.print_report(sweep.report(runs, configs_seed=0, sweep_seed=0, ray_init_s=4.2))
    out = capsys.readouterr().out
    assert "Ray Tune" in out and "80.0" in out and "96.0" in out
    assert "no /v1/sweeps on this server" in out
    assert "≥ 15×" in out


def test_the_reporter_hands_on_each_epoch_s_validation_accuracy() -> None:
    from core.train import train

    reports: list[dict[str, float]] = []
    spec = parse_spec(sweep.trial_spec({"lr": 0.05, "weight_decay": 1e-4}, epochs=3))
    result = train(spec, callbacks=[sweep.EpochReporter(reports.append)])
    assert reports == [
        {"val_accuracy": r.val["accuracy"], "epoch": r.epoch} for r in result.history
    ]
    assert [r["epoch"] for r in reports] == [1, 2, 3]


class ContractServer:
    """The sweeps' HTTP contract of issue 17 as a fake server of three trials over two
    pages, their jobs and their curves (the real routes are tested with the service)."""

    def __init__(self) -> None:
        self.posted: list[dict[str, object]] = []
        self.polls = 0
        self.finished_at = ""
        jobs = {  # id -> (status, epochs, curve, trial params)
            "j1": ("succeeded", 3, [0.5, 0.8, 0.9], (0.01, 1e-4)),
            "j2": ("pruned", 2, [0.2], (0.25, 1e-5)),  # epochs: its progress, not its points
            "j3": ("succeeded", 3, [0.6, 0.95, 0.93], (0.02, 1e-3)),
        }
        self.jobs = jobs

    def handle(self, request: httpx.Request) -> httpx.Response:
        import json as _json
        from datetime import UTC, datetime, timedelta

        path, q = request.url.path, request.url.params
        if request.method == "POST" and path == "/v1/sweeps":
            self.posted.append(_json.loads(request.content))
            done = datetime.now(UTC) + timedelta(seconds=100)
            self.finished_at = done.isoformat().replace("+00:00", "Z")
            return httpx.Response(201, json={"id": "s1", "status": "queued"})
        if path == "/v1/sweeps/s1":
            self.polls += 1
            status = "running" if self.polls < 3 else "succeeded"
            return httpx.Response(200, json={
                "id": "s1", "status": status, "error": None,
                "finished_at": self.finished_at if status == "succeeded" else None,
                "best": {"job_id": "j3", "trial": 2, "params": {}, "objective": 0.93},
            })  # fmt: skip
        if path == "/v1/sweeps/s1/trials":
            assert q["sort"] == "trial"
            ids = ["j1", "j2"] if "cursor" not in q else ["j3"]
            items = [
                {"id": i, "trial": n, "status": self.jobs[i][0], "objective": None,
                 "params": {"optimizer.lr": self.jobs[i][3][0],
                            "regularization.weight_decay": self.jobs[i][3][1]}}
                for n, i in enumerate(ids)
            ]  # fmt: skip
            cursor = "p2" if "cursor" not in q else None
            return httpx.Response(200, json={"items": items, "next_cursor": cursor})
        job_id = path.split("/")[3]
        status, epochs, curve, _ = self.jobs[job_id]
        if path.endswith("/metrics"):
            points = [{"step": s, "value": v} for s, v in enumerate(curve, start=1)]
            return httpx.Response(200, json={"metrics": {"accuracy/val": points[::-1]}})
        return httpx.Response(200, json={
            "id": job_id, "status": status, "progress": {"epoch": epochs}, "result": None,
            "finished_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        })  # fmt: skip


def test_a_gradq_sweep_is_read_through_the_http_contract() -> None:
    server = ContractServer()
    transport = httpx.MockTransport(server.handle)
    with httpx.Client(base_url="http://gradq", transport=transport) as http:
        run = sweep.sweep_run(
            http, "sweep-asha", trials=3, epochs=3, seed=5, parallel=2, timeout=60
        )
    assert server.posted == [sweep.sweep_spec(trials=3, epochs=3, seed=5, parallel=2, asha=True)]
    assert server.polls == 3  # until the sweep is terminal
    assert run.error is None and run.notes == []
    assert 99 < (run.wall_s or 0) < 101  # from the POST to the sweep's finished_at
    assert [(t.lr, t.weight_decay) for t in run.trials] == [
        (0.01, 1e-4),
        (0.25, 1e-5),
        (0.02, 1e-3),
    ]
    assert run.statuses == {"succeeded": 2, "pruned": 1}
    assert run.epochs == 8
    assert run.best == 0.95
    assert run.extra["sweep_best_objective"] == 0.93


def test_a_server_without_sweeps_is_a_row_not_measured() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json={"detail": "Not Found"}))
    with httpx.Client(base_url="http://gradq", transport=transport) as http:
        run = sweep.sweep_run(http, "sweep", trials=3, epochs=3, seed=0, parallel=2, timeout=60)
    assert run.wall_s is None and not run.ok
    assert run.error == "this server has no /v1/sweeps"


def test_a_job_s_phases_are_medians_over_the_jobs_with_timings() -> None:
    def t(attempt: float, train: float) -> dict[str, float]:
        return {"attempt_s": attempt, "attempt_cpu_s": attempt / 2, "tracker_started": 100.0,
                "trained": 100.0 + train, "mlflow_critical_s": attempt - train}  # fmt: skip

    phases = sweep.median_phases([t(1.0, 0.4), {}, t(3.0, 0.6), t(2.0, 0.5)])
    assert phases == pytest.approx(
        {"attempt": 2.0, "attempt_cpu": 1.0, "train": 0.5, "mlflow": 1.5}
    )
    assert sweep.median_phases([{}]) == {}


@pytest.mark.slow
def test_the_quick_profile_trains_one_packed_sweep_and_times_each_trial_s_phases(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``--quick --only profile``: a 4-trial sweep of 2 epochs driven in this process, its
    trials trained as one pack, and the phases timed on every thread (no service, no Ray)."""
    import json

    sweep.main(["--quick", "--only", "profile", "--json"])
    rep = json.loads(capfd.readouterr().out)
    assert rep["runs"] == []
    [profile] = rep["profiles"]
    assert (profile["trials"], profile["epochs"], profile["pack"]) == (4, 2, True)
    assert profile["sweep_status"] == "succeeded"
    assert profile["statuses"] == {"succeeded": 4}
    calls = {p["phase"]: p["calls"] for p in profile["phases"]}
    seconds = {p["phase"]: p["seconds"] for p in profile["phases"]}
    assert calls["training: train_packed (all of it)"] == 1  # one pack
    assert calls["training: train, one trial alone (all of it)"] == 0
    for phase in (
        "MLflow: run start (experiment, run, params, tags)",
        "MLflow: finish (all of it)",
        "database: the final write (finish)",
        "controller: tell (Optuna) as each trial ended",
    ):
        assert calls[phase] == 4, phase  # once a trial
    # the members' epochs evaluated in one batched pass an epoch (iris: shared rows)
    assert calls["  of which per-epoch evaluation (per pack)"] == 2
    assert calls["  of which per-epoch evaluation (per member)"] == 0
    assert all(s >= 0 for s in seconds.values())
    assert 0 < seconds["training: train_packed (all of it)"] < profile["wall_s"]
    assert set(profile["parts_s"]) == {
        "controller: until every trial is queued",
        "the trials' attempts (claim to final writes)",
        "controller: from there until the sweep ended",
    }
