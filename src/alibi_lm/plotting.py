"""The extrapolation plot: perplexity against evaluation length, one line per model.

It mirrors Figure 1 of Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases
Enables Input Length Extrapolation" (ICLR 2022): a log2 length axis with the training length marked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .evaluation import PerplexityResult


def plot_perplexity(
    results: Sequence[PerplexityResult], path: str | os.PathLike, title: str | None = None, dpi: int = 120
) -> Path:
    """Save a PNG of perplexity against evaluation length (log2 axis), training length(s) as dashed lines."""
    # Figure + Agg canvas, never pyplot: no global backend switch, works headless and inside notebooks.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    if not results:
        raise ValueError("nothing to plot: results is empty")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    all_ppl = []
    lengths: set[int] = set()
    for res in results:
        xs = [r.length for r in res.lengths]
        ys = [r.ppl for r in res.lengths]
        ax.plot(xs, ys, marker="o", label=res.model_name)
        all_ppl += ys
        lengths.update(xs)
    train_lengths = sorted({res.training_length for res in results if res.training_length})
    for train_len in train_lengths:
        ax.axvline(train_len, color="gray", linestyle="--", linewidth=1, label=f"training length {train_len}")
    ax.set_xscale("log", base=2)
    ticks = sorted(lengths | set(train_lengths))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in ticks])
    # A blown-up baseline (the paper's sinusoidal reaches 20x its perplexity) would flatten every other line.
    if min(all_ppl) > 0 and max(all_ppl) / min(all_ppl) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    mode = results[0].mode if results[0].mode == "nonoverlapping" else f"sliding, stride {results[0].stride}"
    ax.set_title(title or f"Perplexity vs evaluation length ({mode})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


__all__ = ["plot_perplexity"]
