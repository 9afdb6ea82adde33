"""One figure style for the book: seaborn, a colour-blind-safe palette, log-log plots with fitted slopes."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

__all__ = ["style", "loglog", "PALETTE"]

PALETTE = "colorblind"


def style():
    import seaborn as sns
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.titlesize": "medium",
                         "legend.fontsize": "small"})


def loglog(ax, x, y, *, fit=None, label="", marker="o", yerr=None, color=None):
    """Plot ``y`` against ``x`` on log-log axes; with ``fit`` (a :class:`~diffnotes.metrics.SlopeFit`) draw the
    fitted line dashed in the same colour and put the slope and its interval in the legend."""
    x = torch.as_tensor(x, dtype=torch.float64).cpu()
    y = torch.as_tensor(y, dtype=torch.float64).cpu()
    if yerr is not None:
        line = ax.errorbar(x, y, yerr=torch.as_tensor(yerr).cpu(), fmt=marker, label=label, color=color,
                           capsize=2)[0]
    else:
        (line,) = ax.plot(x, y, marker, label=label, color=color)
    if fit is not None:
        ax.plot(x, fit.predict(x), "--", color=line.get_color(),
                label=f"slope {fit.slope:.2f} [{fit.ci[0]:.2f}, {fit.ci[1]:.2f}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    return line
