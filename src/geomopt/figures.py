"""Matplotlib figures (PNG), headless."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _panels(panels: Mapping[str, Mapping[str, Any]], path: str | Path, draw: Callable[[Any, str, Any], None], *,
            xlabel: str, ylabel: str, logx: bool, logy: bool, ncols: int, legend_size: int,
            xticks: Sequence[float] | None = None, hline: float | None = None) -> Path:
    """One subplot per panel; ``draw(ax, label, line)`` draws each line. Saved as PNG.

    Panels are 5.4 x 4.2 inches, titles wrap to the panel's width, and each panel's legend sits below its
    axes (never over the data). ``xticks``: the only x ticks, labelled with their values (e.g. a ladder's
    rungs on a log axis); ``hline``: a dashed reference line at that y (e.g. 0, where an effect changes side)."""
    import textwrap
    path = Path(path)
    n = max(len(panels), 1)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    most = max((len(lines) for lines in panels.values()), default=1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, (3.6 + 0.22 * most) * nrows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for label, line in lines.items():
            draw(ax, label, line)
        ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        if xticks is not None:
            ax.set_xticks(list(xticks), [f"{int(x):,}" if float(x).is_integer() else f"{x:g}" for x in xticks])
            ax.minorticks_off()
        if hline is not None:
            ax.axhline(hline, color="0.35", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=max(legend_size, 8), loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]], path: str | Path, *,
                xlabel: str, ylabel: str, logx: bool = False, logy: bool = False, ncols: int = 4) -> Path:
    """One subplot per panel, one line per label: ``panels[title][label] = (xs, ys)``. Saved as PNG."""
    def draw(ax, label, line):
        xs, ys = line
        ax.plot(xs, ys, label=label, linewidth=1.5)
    return _panels(panels, path, draw, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy, ncols=ncols,
                   legend_size=8)


def plot_bands(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float],
                                                      Sequence[float]]]], path: str | Path, *,
               xlabel: str, ylabel: str, logx: bool = False, logy: bool = False, ncols: int = 4,
               bounds: tuple[float, float] | None = None, xticks: Sequence[float] | None = None,
               hline: float | None = None) -> Path:
    """Like :func:`plot_curves` with a shaded band per line: ``panels[title][label] = (xs, mean, low, high)``
    (e.g. the mean over seeds and its 95% interval from :func:`geomopt.sweep.stats.band`). Saved as PNG.
    ``bounds``: the quantity's range (e.g. ``(0, 100)`` for an error in %): bands are clipped to it.
    ``xticks`` and ``hline``: as in :func:`_panels`.

    Non-finite bounds (a diverged seed) leave a gap in the band; on a log axis a lower bound at or below 0
    is drawn at a tenth of the mean.
    """
    def draw(ax, label, line):
        if len(line) != 4:
            raise ValueError(f"plot_bands: line {label!r}: expected (xs, mean, low, high), got {len(line)} sequences")
        xs, mean, low, high = line
        low = [lo if math.isfinite(lo) and (lo > 0 or not logy) else (m / 10 if math.isfinite(m) else math.nan)
               for lo, m in zip(low, mean)]
        high = [hi if math.isfinite(hi) else math.nan for hi in high]
        if bounds is not None:
            low = [min(max(lo, bounds[0]), bounds[1]) for lo in low]
            high = [min(max(hi, bounds[0]), bounds[1]) for hi in high]
        (drawn,) = ax.plot(xs, mean, label=label, linewidth=1.5, marker="o", markersize=2.5)
        ax.fill_between(xs, low, high, color=drawn.get_color(), alpha=0.2, linewidth=0)
    return _panels(panels, path, draw, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy, ncols=ncols,
                   legend_size=7, xticks=xticks, hline=hline)
