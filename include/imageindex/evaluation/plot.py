"""The Precision@K plot of a ``summary.json`` report (matplotlib's Agg canvas, no pyplot)."""

from __future__ import annotations

import math
from pathlib import Path

from imageindex.modelcache import atomic_write


def plot_summary(report: dict, path: str | Path) -> Path:
    """Precision@K per model (one line each), with the number of tags counted at each K."""
    # The Agg canvas on a bare Figure: no pyplot, so no GUI backend and no global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    ks = report["ks"]
    fig = Figure(figsize=(7.5, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(ks)))
    for label, s in report["models"].items():
        ys = [s["precision"].get(str(k)) for k in ks]
        ax.plot(
            x,
            [math.nan if y is None else y for y in ys],
            marker="o",
            label=f"{label} ({s['embedder']})",
        )
        for xi, y in zip(x, ys, strict=True):
            if y is not None:
                ax.annotate(
                    f"{y:.2f}",
                    (xi, y),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=7,
                )
    counted = next(iter(report["models"].values()), {}).get("tags_counted", {})
    ax.set_xticks(x, [f"P@{k}\n{counted.get(str(k), 0)} tags" for k in ks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean precision over counted tags")
    ax.set_title(
        f"Text-to-image retrieval: {report.get('images', '?')} images, "
        f"{report.get('tags', '?')} tags",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    # The temporary file's name ends in .tmp: the format has to be given.
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
