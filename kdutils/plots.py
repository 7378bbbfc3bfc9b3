"""One look for every figure: the same colour always means the same role.

Teacher, student (trained alone), KD student and baseline keep their colours
across all notebooks, so a class can read any figure at a glance.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

ROLE_COLORS = {
    "teacher": "#1f4e79",   # dark blue
    "student": "#8c8c8c",   # grey: trained without a teacher
    "kd": "#d95f02",        # orange: trained with distillation
    "baseline": "#7570b3",  # purple: the paper's reference model
    "reference": "#1b9e77", # green: probes and upper bounds
}


def role_color(role: str) -> str:
    """Colour of a role; unknown roles raise so a typo never gets a random colour."""
    try:
        return ROLE_COLORS[role]
    except KeyError:
        raise KeyError(f"unknown role '{role}'; known: {sorted(ROLE_COLORS)}") from None


def style() -> None:
    """Apply the lab's plotting style (call once per notebook)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "axes.titleweight": "bold", "savefig.bbox": "tight"})


def finish(ax, title: str, xlabel: str, ylabel: str):
    """Every axis gets a title and labelled axes with units."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def training_curves(histories: dict, key: str, ylabel: str, title: str, ax=None):
    """Plot `key` per epoch for several runs: {label: (role, [History, ...])}, mean and band over seeds."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for label, (role, hists) in histories.items():
        series = [h.series(key) for h in hists]
        n = min(len(s) for s in series)
        arr = np.array([s[:n] for s in series], dtype=float)
        x = np.arange(1, n + 1)
        mean = arr.mean(0)
        ax.plot(x, mean, color=role_color(role), label=label)
        if len(series) > 1:
            ax.fill_between(x, arr.min(0), arr.max(0), color=role_color(role), alpha=0.2)
    ax.legend()
    return finish(ax, title, "epoch", ylabel)


def synthworld_preview(batch, n: int = 16, ncols: int = 4):
    """Figure: the first `n` images of a SynthWorld batch, mask outlined, titled by class and caption."""
    n = min(n, len(batch))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.6 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(batch.images[k], interpolation="nearest")
        ax.contour(batch.masks[k], levels=[0.5], colors="white", linewidths=0.7)
        title = f"[{batch.labels[k]}] {batch.class_names[batch.labels[k]]}\n"
        ax.set_title(title + textwrap.fill(batch.captions[k], 34), fontsize=6)
    fig.suptitle(f"SynthWorld {batch.task} task ({batch.config.size}x{batch.config.size}): "
                 f"images, mask outlines (white), captions", fontsize=9)
    fig.tight_layout()
    return fig
