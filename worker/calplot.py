"""``tokenwire calibrate --plot FILE.png``: the reliability diagram and the catch-vs-flagged curve of
each model, drawn with matplotlib (the optional extra ``plot``: ``pip install 'tokenwire[plot]'``).

It draws on a bare :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no display,
no global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .calibrate import Report

__all__ = ["PlotUnavailable", "plot_report", "require_matplotlib"]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed: the message names the extra that brings it."""


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or :class:`PlotUnavailable` naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, which the optional extra `plot` installs: pip install 'tokenwire[plot]'"
        ) from None
    return matplotlib


def plot_report(report: Report, path: Path) -> int:
    """Draw ``report`` into the PNG ``path`` (one row per model: reliability, catch vs flagged);
    returns the number of models drawn."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, len(report.models))
    figure = Figure(figsize=(11, 4.5 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 2, squeeze=False)
    if not report.models:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no feedback recorded", ha="center", va="center")
    for (reliability, curve), model in zip(axes, report.models, strict=False):
        reliability.plot(
            [0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated"
        )
        curve.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
        for s in model.signals:
            if s.n == 0:
                continue
            filled = [b for b in s.bins if b.n and b.mean_p is not None and b.accuracy is not None]
            if filled:
                reliability.plot(
                    [b.mean_p for b in filled], [b.accuracy for b in filled], marker="o", label=s.signal
                )
            points = [p for p in s.tradeoff if p.caught is not None]
            if points:
                auroc = "" if s.auroc is None else f" (AUROC {s.auroc:.3f})"
                line = curve.plot(
                    [p.flagged for p in points], [p.caught for p in points], label=s.signal + auroc
                )
                if s.recommended is not None and s.recommended.caught is not None:
                    curve.plot(
                        [s.recommended.flagged], [s.recommended.caught], marker="*", markersize=12,
                        color=line[0].get_color(),
                    )  # fmt: skip
        note = "" if model.reliable else ", unreliable (fewer than 200)"
        reliability.set(
            title=f"{model.model}: reliability ({model.n_labelled} judged{note})",
            xlabel="signal as a probability (bin mean)",
            ylabel="fraction correct",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        curve.set(
            title=f"{model.model}: catch vs flagged (★ recommended)",
            xlabel="fraction of answers flagged",
            ylabel="fraction of incorrect answers caught",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        reliability.legend(fontsize="small", loc="upper left")
        curve.legend(fontsize="small", loc="lower right")
    figure.savefig(path, format="png", dpi=100)
    return len(report.models)
