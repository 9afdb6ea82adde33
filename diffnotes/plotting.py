"""One figure style for the book: seaborn, a colour-blind-safe palette, log-log plots with fitted slopes."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

__all__ = ["style", "loglog", "table", "PALETTE"]

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


class _Table:
    def __init__(self, header, rows, caption):
        self.header, self.rows, self.caption = list(header), [list(r) for r in rows], caption

    @staticmethod
    def _cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    def _repr_html_(self):
        import html
        e = lambda v: html.escape(self._cell(v))  # noqa: E731
        cap = f"<caption style='caption-side:top;text-align:left'>{html.escape(self.caption)}</caption>" \
            if self.caption else ""
        head = "".join(f"<th>{e(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in self.rows)
        return (f"<div style='overflow-x:auto'><table class='table diffnotes-table'>{cap}<thead><tr>{head}</tr>"
                f"</thead><tbody>{body}</tbody></table></div>")

    def __repr__(self):
        cols = [[self._cell(v) for v in c] for c in zip(self.header, *self.rows)]
        w = [max(len(v) for v in c) for c in cols]
        lines = ["  ".join(self._cell(v).ljust(n) for v, n in zip(r, w)) for r in [self.header, *self.rows]]
        lines.insert(1, "  ".join("-" * n for n in w))
        return (self.caption + "\n" if self.caption else "") + "\n".join(lines)


def table(header, rows, caption=""):
    """Show a table: rendered HTML in a notebook and in the book, aligned text elsewhere.  Floats print with four
    significant digits; pass strings to format a column yourself."""
    from .verdict import show
    t = _Table(header, rows, caption)
    show(t, repr(t))
