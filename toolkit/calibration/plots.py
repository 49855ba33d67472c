"""Calibration plots as PNG files: score histograms with thresholds, ROC and PR curves.

Figures are built with matplotlib's object API on the Agg canvas: no pyplot
state, no display, safe in services and tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from toolkit.calibration.roc import pr_curve, roc_curve
from toolkit.calibration.thresholds import smoothed_densities

DPI = 110
THRESHOLD_COLOURS = ("black", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:olive")


def new_figure(size_in: tuple[float, float] = (6.4, 4.4)) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size_in, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def colormap(name: str) -> Colormap:
    return matplotlib.colormaps[name]


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_score_histograms(
    positives: np.ndarray,
    negatives: np.ndarray,
    thresholds: Mapping[str, float | None],
    path: str | Path,
    *,
    positive_name: str = "novel",
    negative_name: str = "known",
    xlabel: str = "novelty score = 1 - top-1 cosine",
    chosen: str | None = None,
) -> Path:
    """Density histograms of both populations, their smoothed curves, and threshold lines."""
    fig, ax = new_figure()
    both = np.concatenate([positives, negatives])
    lo, hi = float(both.min()), float(both.max())
    bins: int | list[float] = np.linspace(lo, hi, 41).tolist() if hi > lo else 10
    ax.hist(negatives, bins=bins, density=True, alpha=0.45, color="tab:blue",
            label=f"{negative_name} (n={negatives.size})")
    ax.hist(positives, bins=bins, density=True, alpha=0.45, color="tab:orange",
            label=f"{positive_name} (n={positives.size})")
    centres, f_pos, f_neg = smoothed_densities(np.asarray(positives, float), np.asarray(negatives, float))
    ax.plot(centres, f_neg, color="tab:blue", lw=1)
    ax.plot(centres, f_pos, color="tab:orange", lw=1)
    for i, (name, value) in enumerate(thresholds.items()):
        if value is None:
            continue
        style = "-" if name == chosen else "--"
        width = 2.0 if name == chosen else 1.0
        ax.axvline(value, color=THRESHOLD_COLOURS[i % len(THRESHOLD_COLOURS)], ls=style, lw=width,
                   label=f"{name} = {value:.4f}" + (" (chosen)" if name == chosen else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=7, frameon=False)
    return save_figure(fig, path)


def plot_roc(
    positives: np.ndarray, negatives: np.ndarray, path: str | Path, *,
    mark: float | None = None, title: str = "ROC",
) -> Path:
    curve = roc_curve(positives, negatives)
    fig, ax = new_figure((4.8, 4.4))
    ax.plot(curve.fpr, curve.tpr, color="tab:blue", lw=1.5, label=f"AUROC {curve.auc:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    if mark is not None:
        fpr = float((np.asarray(negatives) >= mark).mean())
        tpr = float((np.asarray(positives) >= mark).mean())
        ax.plot([fpr], [tpr], "o", color="tab:red", label=f"threshold {mark:.4f}")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    return save_figure(fig, path)


def plot_pr(
    positives: np.ndarray, negatives: np.ndarray, path: str | Path, *,
    mark: float | None = None, title: str = "precision-recall",
) -> Path:
    curve = pr_curve(positives, negatives)
    fig, ax = new_figure((4.8, 4.4))
    ax.step(curve.recall, curve.precision, where="post", color="tab:blue", lw=1.5,
            label=f"AP {curve.average_precision:.4f}")
    ax.axhline(curve.prevalence, color="grey", ls=":", lw=1, label=f"prevalence {curve.prevalence:.3f}")
    if mark is not None:
        tp = float((np.asarray(positives) >= mark).sum())
        fp = float((np.asarray(negatives) >= mark).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        ax.plot([tp / len(positives)], [precision], "o", color="tab:red", label=f"threshold {mark:.4f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left", frameon=False)
    return save_figure(fig, path)
