"""The chart of bench_engines.py (engines_mpi.png), from the merged report (bench/results/latest.json).

    python bench/plots_engines.py [bench/results/latest.json]

- engines_mpi.png: ndshm.mpi.allocate_shared (plain and populate=True) against
  MPI.Win.Allocate_shared, ms per phase, steady state and cold start side by side.

``plots.make_all`` draws it when the report has the engines benchmark; Dask and Ray charts join here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict

from plot_style import plt, subtitle as _subtitle

MPI_COLORS = {"ndshm": "#1f77b4", "ndshm-populate": "#17becf", "win": "#d62728"}
MPI_LABELS = {"ndshm": "ndshm.mpi.allocate_shared", "ndshm-populate": "allocate_shared(populate=True)",
              "win": "MPI.Win.Allocate_shared"}


def engines_mpi_chart(report: Dict[str, Any], out: Path) -> Path:
    m = report["benchmarks"]["engines"]["data"]["mpi"]
    figs = m["s"]
    phases = list(next(iter(figs.values())))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.0), sharey=True)
    width = 0.8 / len(figs)
    top = max(v[when] for per_phase in figs.values() for v in per_phase.values() for when in ("steady", "cold"))
    for ax, when in zip(axes, ("steady", "cold")):
        for k, (impl, per_phase) in enumerate(figs.items()):
            xs = [i + (k - (len(figs) - 1) / 2) * width for i in range(len(phases))]
            ys = [per_phase[p][when] * 1e3 for p in phases]
            bars = ax.bar(xs, ys, width=width, color=MPI_COLORS.get(impl, "#7f7f7f"), label=MPI_LABELS.get(impl, impl))
            for b, v in zip(bars, ys):
                ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(phases)))
        ax.set_xticklabels(phases, fontsize=8)
        ax.set_title(f"{when} ({'median of later iterations' if when == 'steady' else 'first iteration of a job'})")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_ylim(0, top * 1e3 * 1.35)  # room for the legend above the bars
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("ms, slowest rank (lower is better)")
    size = m["bytes"] / 1e6
    fig.suptitle(f"MPI: one {size:.0f} MB float32 array per node, {m['ranks']} ranks ({m.get('library')})\n"
                 + _subtitle(report), fontsize=10)
    fig.tight_layout()
    path = Path(out) / "engines_mpi.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def engines_chart(report: Dict[str, Any], out: Path) -> Path:
    """The engines chart(s) this report has figures for (the MPI one today)."""
    return engines_mpi_chart(report, out)


def main(argv: list) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results" / "latest.json"
    print(engines_chart(json.loads(src.read_text()), src.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
