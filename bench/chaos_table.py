"""The Reliability table of bench/RESULTS.md from chaos reports: one row per fault over every
run in the files given (each a ``GRADQ_CHAOS_REPORT`` file: one JSON line per chaos test).

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 GRADQ_CHAOS_REPORT=r1.jsonl .venv/bin/pytest -m chaos
    .venv/bin/python bench/chaos_table.py r1.jsonl r2.jsonl …

"lost", "duplicated" and "5xx" are summed over the runs: each is what a test counted (the
audit's lost and duplicated jobs, the 5xx answers its clients or the server counted).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def spread(values: list[float], unit: str = "") -> str:
    low, high = min(values), max(values)
    return f"{low:g}{unit}" if low == high else f"{low:g}–{high:g}{unit}"


def table(rows: list[dict[str, Any]]) -> str:
    by_fault: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_fault[row["fault"]].append(row)
    lines = [
        "| fault | runs | in flight | accepted | lost | duplicated | 5xx | time to recover |",
        "|---|---:|---|---|---:|---:|---:|---|",
    ]
    for fault, runs in by_fault.items():
        lines.append(
            f"| {fault} | {len(runs)} | {spread([r['in_flight'] for r in runs])} "
            f"| {spread([r['accepted'] for r in runs])} | {sum(r['lost'] for r in runs)} "
            f"| {sum(r['duplicated'] for r in runs)} | {sum(r['http_5xx'] for r in runs)} "
            f"| {spread([r['recover_s'] for r in runs], ' s')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    args = parser.parse_args()
    rows = [json.loads(line) for path in args.reports for line in path.read_text().splitlines()]
    print(table(rows))


if __name__ == "__main__":
    main()
