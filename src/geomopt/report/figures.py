"""Matplotlib figures (PNG), headless."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(panels: Mapping[str, Mapping[str, tuple[Sequence[float], ...]]], path: str | Path, *,
                xlabel: str, ylabel: str, logy: bool = False, ncols: int = 4) -> Path:
    """One subplot per panel, one line per label: ``panels[title][label] = (xs, ys)``, or
    ``(xs, mean, low, high)`` for a mean over seeds with its interval as a shaded band
    (:func:`geomopt.sweep.band`). Saved as PNG."""
    path = Path(path)
    n = max(len(panels), 1)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for label, curve in lines.items():
            if len(curve) not in (2, 4):
                raise ValueError(f"plot_curves: panel {title!r}, line {label!r}: expected (xs, ys) or "
                                 f"(xs, mean, low, high), got {len(curve)} sequences")
            (line,) = ax.plot(curve[0], curve[1], label=label, linewidth=1.5)
            if len(curve) == 4:
                # non-finite bounds (a diverged seed) are left out; on a log axis a bound below 0 is drawn
                # at a tenth of the mean
                low = [lo if math.isfinite(lo) and (lo > 0 or not logy) else (m / 10 if math.isfinite(m) else math.nan)
                       for lo, m in zip(curve[2], curve[1])]
                high = [hi if math.isfinite(hi) else math.nan for hi in curve[3]]
                ax.fill_between(curve[0], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bands(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float],
                                                      Sequence[float]]]], path: str | Path, *,
               xlabel: str, ylabel: str, logx: bool = False, logy: bool = False, ncols: int = 4) -> Path:
    """Like :func:`plot_curves` with a shaded band per line: ``panels[title][label] = (xs, mean, low, high)``
    (e.g. the mean over seeds and its 95% interval from :func:`geomopt.sweep.stats.band`). Saved as PNG."""
    path = Path(path)
    n = max(len(panels), 1)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for label, (xs, mean, low, high) in lines.items():
            (line,) = ax.plot(xs, mean, label=label, linewidth=1.5, marker="o", markersize=2.5)
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
