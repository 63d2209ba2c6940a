"""Draw the plots of bench/RESULTS.md from bench/figures.json (recorded figures, no measuring).

    .venv/bin/python bench/plots.py            # writes bench/plots/{engine,api,service}.png

figures.json is written by hand from the runs' output (see bench/history/): each entry keeps
its date, machine and command. After a new run of record, update figures.json, rerun this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

HERE = Path(__file__).resolve().parent
COLORS = {"sqlite": "#1f77b4", "postgres": "#d62728"}
BARS = {
    "PyTorch autograd loop": "#9e9e9e",
    "gradq engine=autograd": "#ff7f0e",
    "gradq engine=manual": "#2ca02c",
}
DPI = 100


def plain(x: float, _pos: Any = None) -> str:
    return f"{x:g}"


def engine(figs: list[dict[str, Any]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.26
    for g, conf in enumerate(figs):
        names = [n for n in BARS if n in conf["ratios"]]
        for i, name in enumerate(names):
            x = g + (i - (len(names) - 1) / 2) * width
            r = conf["ratios"][name]
            ax.bar(x, r, width * 0.92, color=BARS[name], label=name if g == 0 else None)
            ax.text(x, r + 0.05, f"{r:.2f}×", ha="center", va="bottom", fontsize=9)
            target = conf["targets"].get(name)
            if target is not None:
                ax.hlines(
                    target, x - width / 2, x + width / 2, colors="black", linestyles="--", zorder=3
                )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.text(-0.55, 1.03, "anchor = 1", ha="left", va="bottom", fontsize=8)
    ax.plot([], [], "k--", label="target of that bar")
    ax.set_xticks(
        range(len(figs)),
        [f"{c['configuration']}\n× {c['anchor']}" for c in figs],
        fontsize=9,
    )
    ax.set_ylabel("speed ÷ anchor's speed  (1.0 = anchor)")
    ax.set_ylim(0, max(r for c in figs for r in c["ratios"].values()) * 1.18)
    ax.set_title(
        "Engine against its anchors (higher is faster)\n"
        "2026-11-28, H200 machine: CUDA rows on the GPU, CPU rows on one thread of its host",
        fontsize=11,
    )
    ax.legend(loc="upper right", fontsize=9, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def api(figs: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.8))
    shift = {"sqlite": 0.93, "postgres": 1.07}  # side by side at the same offered rate
    for backend, color in COLORS.items():
        opens = [r for r in figs["open_loop_50_clients"] if r["backend"] == backend]
        xs = [r["rate_per_s"] * shift[backend] for r in opens for _ in r["p99_ms"]]
        ys = [p for r in opens for p in r["p99_ms"]]
        ax.scatter(xs, ys, color=color, marker="o", label=f"{backend}, open loop", zorder=3)
        closed = [r for r in figs["closed_loop_50_clients"] if r["backend"] == backend]
        ax.scatter(
            [r["submits_per_s"] for r in closed],
            [r["p99_ms"] for r in closed],
            facecolors="none",
            edgecolors=color,
            marker="s",
            s=50,
            label=f"{backend}, closed loop",
            zorder=3,
        )
    target = figs["target_p99_ms"]
    ax.axhline(target, color="black", linestyle="--", linewidth=1)
    ax.text(105, target * 1.08, f"target: p99 < {target} ms", fontsize=9)
    ax.annotate(
        "first run, 3 min after boot\n(one ~0.2 s stall; not seen again)",
        xy=(200 * shift["postgres"], 114.6),
        xytext=(260, 130),
        fontsize=8,
        arrowprops={"arrowstyle": "->", "linewidth": 0.8},
    )
    ax.text(200, 2.6, "open loop\n200/s", ha="center", fontsize=8)
    ax.text(500, 2.6, "open loop\n500/s", ha="center", fontsize=8)
    ax.text(2850, 2.6, "closed loop:\nsaturated", ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(100, 5000)
    ax.set_ylim(2, 200)
    ax.xaxis.set_major_formatter(FuncFormatter(plain))
    ax.yaxis.set_major_formatter(FuncFormatter(plain))
    ax.set_xticks([100, 200, 500, 1000, 2000, 5000])
    ax.set_yticks([2, 5, 10, 20, 50, 100, 200])
    ax.set_xlabel("submits/s from 50 clients (open loop: the rate offered; closed: achieved)")
    ax.set_ylabel("submit latency p99 (ms)")
    ax.set_title(
        "API: POST /v1/jobs p99 against load, one gradq api process\n"
        "2026-11-29, 2-core VM of session 5, PostgreSQL on the same cores",
        fontsize=11,
    )
    ax.legend(loc="upper right", fontsize=8, ncol=2, frameon=False)
    ax.grid(alpha=0.3, which="major")
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def service(figs: dict[str, Any], out: Path) -> None:
    runs, ranges = figs["runs"], figs["recorded_ranges"]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(10, 4.8), gridspec_kw={"width_ratios": [2.2, 1]}
    )
    labels = [
        "1 epoch\n(reference net)",
        "50 epochs\n(0.25 s training)",
        "500 epochs\n(3.2–3.9 s)",
        "realistic\n(~9 s, 8 epochs)",
    ]

    def points(key: str) -> list[float]:
        return [r[key] for r in runs if r.get(key) is not None]

    # (values, one point per run?): the first two are ranges recorded as text, not runs
    critical = [
        (ranges["one_epoch_critical_pct"], False),
        (ranges["reference_50_epochs_critical_pct"], False),
        (points("long_500_critical_pct"), True),
        (points("realistic_critical_pct"), True),
    ]
    everything = {2: points("long_500_all_pct"), 3: points("realistic_all_pct")}

    def span(ax: Any, x: float, values: list[float], per_run: bool, color: str) -> None:
        lo, hi = min(values), max(values)
        ax.vlines(x, lo, hi, color=color, linewidth=6, alpha=0.5)
        if per_run or lo == hi:
            ax.scatter([x] * len(values), values, color=color, s=18, zorder=3)

    def pct(lo: float, hi: float) -> str:
        f = "{:.0f}" if float(lo).is_integer() and float(hi).is_integer() else "{:.1f}"
        return f"{f.format(lo)} %" if lo == hi else f"{f.format(lo)}–{f.format(hi)} %"

    for i, (values, per_run) in enumerate(critical):
        span(left, i - 0.08, values, per_run, "#2ca02c")
        lo, hi = min(values), max(values)
        left.text(i - 0.16, hi * 1.12, pct(lo, hi), ha="right", fontsize=8, color="#1b6e1b")
    for i, values in everything.items():
        span(left, i + 0.08, values, True, "#9467bd")
        lo, hi = min(values), max(values)
        left.text(i + 0.16, hi * 1.12, pct(lo, hi), ha="left", fontsize=8, color="#5b3d7a")
    left.scatter([], [], color="#2ca02c", label="on the job's critical path")
    left.scatter([], [], color="#9467bd", label="in all (with background sends)")
    target = figs["target_mlflow_share_pct"]
    left.axhline(target, color="black", linestyle="--", linewidth=1)
    left.text(-0.45, target * 1.1, f"target ≤ {target} % (judged on the realistic job)", fontsize=8)
    left.set_yscale("log")
    left.set_ylim(0.5, 200)
    left.yaxis.set_major_formatter(FuncFormatter(plain))
    left.set_yticks([0.5, 1, 3, 10, 30, 100])
    left.set_xticks(range(len(labels)), labels, fontsize=8)
    left.set_xlim(-0.5, len(labels) - 0.5)
    left.set_ylabel("MLflow's share of the job's time (%)")
    left.set_title("MLflow's share by job size", fontsize=10)
    left.legend(loc="upper right", fontsize=8, frameon=False)
    left.grid(axis="y", alpha=0.3)

    ref = points("overhead_reference_s")
    real = ranges["realistic_overhead_s"]
    span(right, 0, ref, True, "#1f77b4")
    right.text(0, max(ref) + 0.04, f"{min(ref):.2f}–{max(ref):.2f} s", fontsize=8, ha="center")
    span(right, 1, real, False, "#1f77b4")
    right.text(
        1,
        real[1] + 0.04,
        f"{real[0]:+.1f} to {real[1]:+.1f} s".replace("-", "−"),
        fontsize=8,
        ha="center",
    )
    right.axhline(0, color="black", linewidth=0.6)
    right.axhline(1.0, color="black", linestyle="--", linewidth=1)
    right.text(-0.5, 1.04, "target ≤ 1 s + 5 % of the job", fontsize=8)
    right.set_xticks([0, 1], [labels[1], labels[3]], fontsize=8)
    right.set_xlim(-0.6, 1.6)
    right.set_ylim(-0.7, 1.3)
    right.set_ylabel("service time − direct core.train (s)")
    right.set_title("Service overhead (queue, Ray, MLflow)", fontsize=10)
    right.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "Service, 2026-11-29, 2-core VM of session 5: bench/service.py --jobs 200"
        " (5 runs; the realistic job in the last 3)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def main() -> None:
    figs = json.loads((HERE / "figures.json").read_text())
    out = HERE / "plots"
    out.mkdir(exist_ok=True)
    engine(figs["engine"], out / "engine.png")
    api(figs["api"], out / "api.png")
    service(figs["service"], out / "service.png")
    for p in sorted(out.glob("*.png")):
        print(f"{p.relative_to(HERE.parent)}  {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
