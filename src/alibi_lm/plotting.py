"""The plots: perplexity against evaluation length (one line per model), and the analysis curves.

`plot_perplexity` mirrors Figure 1 of Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases
Enables Input Length Extrapolation" (ICLR 2022): a log2 length axis with the training length marked. `plot_curves`
draws any family of named curves on a log2 x axis (the copy probe's loss against the gap, the loss by position).
`plot_efficiency` puts the perplexity of the efficiency experiment beside its speed and memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _figure(width: float = 6.4, height: float = 4.2, panels: int = 1) -> tuple[Any, list[Any]]:
    # Figure + Agg canvas, never pyplot: no global backend switch, works headless and inside notebooks.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _save(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _log2_axis(ax: Any, ticks: Sequence[float]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(ticks)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])


def plot_perplexity(results: Sequence[Any], path: str | os.PathLike, title: str | None = None, dpi: int = 120) -> Path:
    """Save a PNG of perplexity against evaluation length (log2 axis), training length(s) as dashed lines."""
    if not results:
        raise ValueError("nothing to plot: results is empty")
    fig, (ax,) = _figure()
    _draw_perplexity(ax, results, title)
    return _save(fig, path, dpi)


def _draw_perplexity(ax: Any, results: Sequence[Any], title: str | None) -> None:
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
    _log2_axis(ax, sorted(lengths | set(train_lengths)))
    # A blown-up baseline (sinusoidal: 3x to 20x its perplexity at L) would flatten every other line.
    if min(all_ppl) > 0 and max(all_ppl) / min(all_ppl) > 3:
        ax.set_yscale("log")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    mode = results[0].mode if results[0].mode == "nonoverlapping" else f"sliding, stride {results[0].stride}"
    ax.set_title(title or f"Perplexity vs evaluation length ({mode})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    marks: dict[str, float] | None = None,
    dashed: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    ticks: Sequence[float] | None = None,
    dpi: int = 120,
) -> Path:
    """Save a PNG of named curves {label: (xs, ys)} on a log2 x axis.

    `marks` draws labelled vertical lines (such as the training length); `dashed` adds reference curves drawn dashed
    in the colour of the solid curve with the same position in the dict (such as the loss the first time a span
    is seen); `ticks` are the x ticks (default: every x of the curves). Non-positive xs are left out (log axis).
    """
    if not curves:
        raise ValueError("nothing to plot: curves is empty")
    fig, (ax,) = _figure()
    xs_all: set[float] = set()
    colors = []
    for label, (xs, ys) in curves.items():
        kept = [(x, y) for x, y in zip(xs, ys) if x > 0]
        (line,) = ax.plot(*zip(*kept), marker="o" if len(kept) <= 32 else None, label=label)
        colors.append(line.get_color())
        xs_all.update(x for x, _ in kept)
    for color, (label, (xs, ys)) in zip(colors, (dashed or {}).items()):
        kept = [(x, y) for x, y in zip(xs, ys) if x > 0]
        ax.plot(*zip(*kept), linestyle=":", color=color, label=label)
    for label, x in (marks or {}).items():
        ax.axvline(x, color="gray", linestyle="--", linewidth=1, label=label)
    _log2_axis(ax, ticks or sorted(xs_all))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    return _save(fig, path, dpi)


def plot_efficiency(
    results: Sequence[Any],
    speed: dict[str, float],
    memory: dict[str, float],
    path: str | os.PathLike,
    title: str,
    dpi: int = 120,
) -> Path:
    """Perplexity against length (left) beside training tokens/s and peak memory per model (right, as bars)."""
    fig, (left, right) = _figure(width=10.5, height=4.2, panels=2)
    _draw_perplexity(left, results, "Perplexity vs evaluation length")
    names = list(speed)
    width = 0.38
    positions = range(len(names))
    bars = right.bar([i - width / 2 for i in positions], [speed[n] for n in names], width, label="tokens/s")
    right.bar_label(bars, fmt="%.0f", fontsize="small")
    right.set_ylabel("training tokens/s")
    twin = right.twinx()
    bars = twin.bar(
        [i + width / 2 for i in positions], [memory[n] for n in names], width, color="tab:orange", label="MiB"
    )
    twin.bar_label(bars, fmt="%.1f", fontsize="small")
    twin.set_ylabel("peak memory of a training step (MiB)")
    right.set_xticks(list(positions), names)
    right.set_title("Training speed (blue) and memory (orange)")
    fig.suptitle(title)
    return _save(fig, path, dpi)


__all__ = ["plot_curves", "plot_efficiency", "plot_perplexity"]
