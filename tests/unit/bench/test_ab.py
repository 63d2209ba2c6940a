"""bench/ab.py: the figures it compares and how it reads two versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))

import ab  # noqa: E402


def test_figures_are_every_number_by_its_path_of_keys() -> None:
    report = {"machine": "x86_64", "rows": {"a": {"steps_per_s": 10, "ok": True}}, "n": 2.5}
    assert ab.figures(report) == {"rows.a.steps_per_s": 10.0, "n": 2.5}


def test_rows_of_a_list_are_named_by_position_and_text() -> None:
    rows = [{"backend": "sqlite", "clients": 1, "rate": 5.0}, {"backend": "pg", "clients": 50}]
    assert ab.figures(rows) == {
        "0/sqlite.clients": 1.0,
        "0/sqlite.rate": 5.0,
        "1/pg.clients": 50.0,
    }


def test_table_is_the_median_of_each_side_and_new_over_old() -> None:
    rounds = {
        "old": [{"x": 10.0, "only_old": 1.0}, {"x": 30.0, "only_old": 1.0}, {"x": 20.0}],
        "new": [{"x": 11.0}, {"x": 44.0}, {"x": 22.0}],
    }
    assert ab.table(rounds) == [("x", 20.0, 22.0, pytest.approx(1.1))]


def test_unpack_gives_the_commits_tree(tmp_path: Path) -> None:
    tree = ab.unpack("HEAD", tmp_path / "head")
    assert (tree / "core" / "train.py").read_bytes() == subprocess.run(
        ["git", "-C", str(ROOT), "show", "HEAD:core/train.py"], capture_output=True, check=True
    ).stdout
    assert ab.unpack(None, tmp_path / "tree") == ROOT
