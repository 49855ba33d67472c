"""The loss-curve figure written beside a checkpoint (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_loss_curve(losses: list[float], path: Path, title: str = "training loss") -> None:
    """Per-step loss (faint) and its moving average over ~2 % of the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if losses:
        steps = np.arange(1, len(losses) + 1)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="step")
        window = max(1, len(losses) // 50)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, color="tab:blue", linewidth=1.6, label=f"mean of {window}")
        ax.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
