"""PNG charts from bench/results/latest.json (matplotlib, Agg backend: no display needed).

    python bench/plots.py [bench/results/latest.json]

- queue_throughput.png: GB/s and hand-off latency against message size, one line per method,
  the machine's memcpy as the ceiling;
- ipc_classic.png: the classic 10-process table, wall time (process-start baseline marked) and the
  parent's memory growth;
- alloc_cost.png: allocation cost per call against size, and allocation + first touch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

from matplotlib.ticker import FuncFormatter

from plot_style import plt, subtitle as _subtitle
from plots_engines import engines_chart

STYLE = {
    "ndshm put+get": ("#1f77b4", "o", "-"), "ndshm put+receive": ("#2ca02c", "s", "-"),
    "ndshm loan+receive": ("#9467bd", "D", "-"), "multiprocessing.Queue": ("#d62728", "v", "--"),
    "multiprocessing.Pipe": ("#ff7f0e", "^", "--"), "faster_fifo.Queue": ("#8c564b", "P", "--"),
    "memcpy (ceiling)": ("#7f7f7f", "", ":"),
}


def _size_label(n: float, _pos: Any = None) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(n)} B"


def _missing_note(ax: Any, missing: Dict[str, str]) -> None:
    if missing:
        text = "\n".join(f"{k}: {v}" for k, v in missing.items())
        ax.text(0.01, 0.01, text, transform=ax.transAxes, fontsize=7, color="#555555", va="bottom")


def queue_chart(report: Dict[str, Any], out: Path) -> Path:
    q = report["benchmarks"]["queue"]["data"]
    sizes = sorted(int(s) for s in q["sizes"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    missing: Dict[str, str] = {}
    for method, (color, marker, ls) in STYLE.items():
        xs, gbs, lat = [], [], []
        for s in sizes:
            f = q["sizes"][str(s)]["figures"].get(method)
            if f is None:
                if method in q["sizes"][str(s)].get("missing", {}):
                    missing[method] = q["sizes"][str(s)]["missing"][method]
                continue
            xs.append(s)
            gbs.append(f["gb_per_s"])
            lat.append(f.get("p50_us_gap_1ms"))
        if not xs:
            continue
        ax1.plot(xs, gbs, color=color, marker=marker, linestyle=ls, label=method, linewidth=2)
        pts = [(x, y) for x, y in zip(xs, lat) if y is not None and y == y]
        if pts and method != "memcpy (ceiling)":
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, linestyle=ls,
                     label=method, linewidth=2)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(FuncFormatter(_size_label))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        ax.set_xlabel("message size (float32 array)")
        ax.grid(True, which="major", alpha=0.3)
    ax1.set_ylabel("throughput, GB/s (log scale; higher is better)")
    ax1.set_title("Throughput between two processes")
    ax2.set_ylabel("p50 hand-off latency, µs (log scale; lower is better)")
    ax2.set_title("Hand-off latency, consumer asleep (paced sends)")
    ax1.legend(fontsize=8, loc="upper left")
    ax2.legend(fontsize=8, loc="upper left")
    _missing_note(ax1, missing)
    fig.suptitle("ndshm.Queue vs multiprocessing and faster-fifo\n" + _subtitle(report), fontsize=10)
    fig.text(0.5, 0.005, "loan+receive copies nothing (the producer writes in place, the consumer reads in place): "
             "its GB/s is message size × hand-offs per second, so it can pass memcpy.", ha="center", fontsize=8,
             color="#444444")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "queue_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def classic_chart(report: Dict[str, Any], out: Path) -> Path:
    c = report["benchmarks"]["ipc"]["data"]["classic"]
    order = ["nothing", "ndshm", "shared_memory", "Pipe", "Queue"]
    rows = c["rows"]
    names = [r for r in order if r in rows]
    colors = {"nothing": "#bbbbbb", "ndshm": "#1f77b4", "shared_memory": "#2ca02c", "Pipe": "#ff7f0e",
              "Queue": "#d62728"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    walls = [rows[r]["wall_s"] * 1e3 for r in names]
    bars = ax1.bar(names, walls, color=[colors[r] for r in names])
    base = rows.get("nothing", {}).get("wall_s")
    if base is not None:
        ax1.axhline(base * 1e3, color="#555555", linestyle=":", linewidth=1.5,
                    label=f"process start alone ({base * 1e3:.0f} ms)")
        ax1.legend(fontsize=8, loc="upper left")
    for b, v in zip(bars, walls):
        ax1.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9)
    ax1.set_ylabel("wall time, ms (median; lower is better)")
    ax1.set_title(f"{c['workers']} processes each write a {c['array'][0]}×{c['array'][1]} float32 array")
    priv = [rows[r]["anon_mib"] for r in names]
    shm = [rows[r]["shmem_mib"] for r in names]
    x = range(len(names))
    ax2.bar([i - 0.2 for i in x], priv, width=0.4, color=[colors[r] for r in names], label="private (copies)")
    ax2.bar([i + 0.2 for i in x], shm, width=0.4, color=[colors[r] for r in names], alpha=0.35, hatch="//",
            label="shared pages mapped (no copy)")
    for i, v in zip(x, priv):
        ax2.annotate(f"{v:.1f}", (i - 0.2, v), ha="center", va="bottom", fontsize=9)
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(names)
    ax2.set_ylabel("parent memory growth, MiB (lower is better)")
    ax2.set_title("Parent's resident memory after receiving everything")
    ax2.legend(fontsize=8, loc="upper left")
    _missing_note(ax1, c.get("missing", {}))
    for ax in (ax1, ax2):
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("The classic table\n" + _subtitle(report), fontsize=10)
    fig.tight_layout()
    path = out / "ipc_classic.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def alloc_chart(report: Dict[str, Any], out: Path) -> Path:
    figs: List[Dict[str, Any]] = report["benchmarks"]["alloc"]["data"]["figures"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    libcolor = {"ndshm": "#1f77b4", "numpy": "#d62728", "pyfftw": "#8c564b"}
    sizes = sorted({f["bytes"] for f in figs})
    for op, ls in (("empty", "-"), ("zeros", "--")):
        for lib, color in libcolor.items():
            pts = [(f["bytes"], f["us"][lib]) for f in figs if f["op"] == op and lib in f["us"]]
            if pts:
                ax1.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linestyle=ls, marker="o",
                         label=f"{lib}.{op}" if lib != "pyfftw" else f"pyfftw.{op}_aligned", linewidth=2)
    touch = [f for f in figs if f["op"] == "zeros + first touch"]
    hp = [f for f in figs if f["op"].startswith("zeros + first touch, ndshm hugepages")]
    for lib, color in libcolor.items():
        pts = [(f["bytes"], f["us"][lib] / 1e3) for f in touch if lib in f["us"]]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker="o", linewidth=2,
                     label=f"{lib} zeros + touch")
    pts = [(f["bytes"], f["us"]["ndshm"] / 1e3) for f in hp]
    if pts:
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], color="#17becf", marker="D", linewidth=2,
                 label="ndshm zeros(hugepages, populate) + touch")
    bound = [(f["bytes"], f["fault_ceiling_ms"]) for f in touch if f.get("fault_ceiling_ms")]
    if bound:
        ax2.plot([p[0] for p in bound], [p[1] for p in bound], color="#7f7f7f", linestyle=":",
                 label="4 KiB page faults, no huge pages")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        ax.set_xlabel("array size")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    ax1.set_xticks(sizes)
    ax1.xaxis.set_major_formatter(FuncFormatter(_size_label))
    tsizes = sorted({f["bytes"] for f in touch})
    if tsizes:
        ax2.set_xticks(tsizes)
        ax2.xaxis.set_major_formatter(FuncFormatter(_size_label))
    ax1.set_ylabel("µs per call (median, log scale; lower is better)")
    ax1.set_title("Allocation call alone")
    ax2.set_ylabel("ms per array (median, log scale; lower is better)")
    ax2.set_title("Allocation + first touch of every page")
    fig.suptitle("Aligned allocation cost\n" + _subtitle(report), fontsize=10)
    fig.tight_layout()
    path = out / "alloc_cost.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(report: Dict[str, Any], out: Path) -> List[Path]:
    """Every chart whose benchmark is in ``report``; a chart that fails is reported, not fatal."""
    made = []

    for name, fn in (("queue", queue_chart), ("ipc", classic_chart), ("alloc", alloc_chart), ("engines", engines_chart)):
        if name in report.get("benchmarks", {}):
            try:
                made.append(fn(report, Path(out)))
            except Exception as e:  # keep the other charts and the JSON
                print(f"plots: the {name} chart failed: {type(e).__name__}: {e}", file=sys.stderr)
    return made


def main(argv: List[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results" / "latest.json"
    report = json.loads(src.read_text())
    for p in make_all(report, src.parent):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
