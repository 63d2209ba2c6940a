"""One bench script run alternately on two versions of gradq: old, new, old, new, ...

    .venv/bin/python bench/ab.py --old 1557680 -- bench/engine.py --json --skip-compute-bound
    .venv/bin/python bench/ab.py --old main --new HEAD --rounds 5 -- bench/api.py --json

Each version is a ``git archive`` of its commit (``--new`` defaults to this working tree, as it
is, uncommitted changes included) unpacked in a temporary directory; the script named after
``--`` runs from that directory, as its own subprocess, with the directory first on
``PYTHONPATH`` and ``--json`` among its arguments. Rounds alternate old and new so that both
meet the same moments of a shared machine. Every numeric figure of the JSON report (nested keys
joined by ``.``) found in both versions' reports is printed as the median over the rounds, the
two versions side by side, with new/old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def unpack(ref: str | None, into: Path) -> Path:
    """``ref``'s tree (``None``: this checkout's files as they are) in ``into``."""
    if ref is None:
        return ROOT
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def figures(report: Any, prefix: str = "") -> dict[str, float]:
    """Every number of a JSON report, by its path of keys joined with dots; a list's items
    are named by their position and, for objects, their text fields (``1/sqlite/closed``)."""
    out: dict[str, float] = {}
    if isinstance(report, dict):
        for key, value in report.items():
            out.update(figures(value, f"{prefix}{key}."))
    elif isinstance(report, list):  # rows: named by position and their text fields
        for i, row in enumerate(report):
            words = [v for v in row.values() if isinstance(v, str)] if isinstance(row, dict) else []
            out.update(figures(row, f"{prefix}{'/'.join([str(i), *words])}."))
    elif isinstance(report, (int, float)) and not isinstance(report, bool):
        out[prefix.rstrip(".")] = float(report)
    return out


def run_once(tree: Path, script: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, *script], cwd=tree, env=env, check=True, capture_output=True, text=True
    )
    return figures(json.loads(done.stdout))


def table(rounds: dict[str, list[dict[str, float]]]) -> list[tuple[str, float, float, float]]:
    """(figure, median old, median new, new/old) for every figure both versions reported."""
    keys = set.intersection(*(set(r) for runs in rounds.values() for r in runs))
    rows = []
    for key in sorted(keys):
        old = statistics.median(r[key] for r in rounds["old"])
        new = statistics.median(r[key] for r in rounds["new"])
        rows.append((key, old, new, new / old if old else float("nan")))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--old", required=True, help="git commit (or branch) of the old version")
    ap.add_argument("--new", default=None, help="git commit of the new one (default: this tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print every round's figures as JSON")
    ap.add_argument("script", nargs=argparse.REMAINDER, help="-- bench/X.py --json [args]")
    args = ap.parse_args()
    script = [a for a in args.script if a != "--"]
    if not script:
        ap.error("name the bench script after --, e.g. -- bench/engine.py --json")
    if "--json" not in script:
        script.append("--json")
    with tempfile.TemporaryDirectory(prefix="gradq-ab-") as tmp:
        trees = {
            "old": unpack(args.old, Path(tmp) / "old"),
            "new": unpack(args.new, Path(tmp) / "new"),
        }
        rounds: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for i in range(args.rounds):
            for side in ("old", "new"):
                rounds[side].append(run_once(trees[side], script))
                print(f"round {i + 1}/{args.rounds}: {side} done", file=sys.stderr)
    if args.json:
        print(json.dumps({"old": args.old, "new": args.new or "tree", "rounds": rounds}))
        return
    print(f"{' '.join(script)}: median of {args.rounds} alternating rounds")
    print(f"{'figure':60s} {'old ' + args.old:>14s} {'new':>14s} {'new/old':>8s}")
    for key, old, new, ratio in table(rounds):
        print(f"{key:60s} {old:14.4g} {new:14.4g} {ratio:8.3f}")


if __name__ == "__main__":
    main()
