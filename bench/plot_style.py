"""What every chart shares: matplotlib on the Agg backend (no display needed) and the subtitle
naming the machine and versions a report was measured on."""

from __future__ import annotations

from typing import Any, Dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "subtitle"]


def subtitle(report: Dict[str, Any]) -> str:
    m, v = report.get("machine", {}), report.get("versions", {})
    return (f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, Linux {m.get('kernel', '?')}; "
            f"Python {v.get('python', '?')}, NumPy {v.get('numpy', '?')}, ndshm {v.get('ndshm', '?')}; "
            f"{report.get('mode', '?')} mode")
