"""accuracy_vs_sparsity.png: one curve per (checkpoint, method), each N:M pattern a legend marker.

`plot_series` decides what is drawn (tested directly), `draw` only lays it out. Colour = checkpoint;
line style = pruned (dashed) or pruned + BNT (solid); marker = method or N:M pattern (hollow:
pruned, filled: + BNT). The legend sits beside the axes, so it hides no point, and it names every
pattern: no text inside the axes that could collide.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

METHOD_MARKERS = {"global": "o", "uniform": "s"}
PATTERN_MARKERS = ["^", "v", "D", "P", "X", "h"]  # the N:M patterns, in order of appearance
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


@dataclass(frozen=True)
class Series:
    label: str  # the legend entry
    x: tuple  # sparsity in %
    y: tuple  # top-1 in %
    color: str
    linestyle: str  # "" for markers only
    marker: str
    filled: bool = True


def _stage_series(name: str, points: list[dict], color: str, marker: str, line: bool) -> list[Series]:
    """Pruned, then pruned + BNT (when tuned) of the same points."""
    x = tuple(100 * r["sparsity"] for r in points)
    out = [Series(f"{name} pruned", x, tuple(r["pruned_top1"] for r in points), color,
                  "--" if line else "", marker, filled=False)]
    if points[0]["bnt_top1"] is not None:  # None: swept without batch-norm tuning
        out.append(Series(f"{name} + BNT", x, tuple(r["bnt_top1"] for r in points), color,
                          "-" if line else "", marker))
    return out


def plot_series(rows: list[dict]) -> list[Series]:
    """Everything the plot draws, in legend order: per checkpoint its dense accuracy, a curve per
    sparsity method (sorted by sparsity: methods never share a line) and a marker per N:M pattern."""
    patterns = list(dict.fromkeys(r["pattern"] for r in rows if r["pattern"]))
    series = []
    for i, label in enumerate(dict.fromkeys(r["label"] for r in rows)):
        color = COLORS[i % len(COLORS)]
        mine = [r for r in rows if r["label"] == label]
        series.append(Series(f"{label} dense", (), (mine[0]["dense_top1"],), color, ":", ""))
        for method in dict.fromkeys(r["method"] for r in mine if r["pattern"] is None):
            curve = sorted((r for r in mine if r["method"] == method and r["pattern"] is None),
                           key=lambda r: r["sparsity"])
            series += _stage_series(f"{label} {method}", curve, color,
                                    METHOD_MARKERS.get(method, "o"), line=True)
        for pattern in patterns:
            point = [r for r in mine if r["pattern"] == pattern]
            if point:
                marker = PATTERN_MARKERS[patterns.index(pattern) % len(PATTERN_MARKERS)]
                series += _stage_series(f"{label} {pattern}", point, color, marker, line=False)
    return series


def _short(name: str) -> str:
    return name[:-len(".weight")] if name.endswith(".weight") else name


def plot_title(rows: list[dict], arch: str | None = None) -> str:
    """What was pruned (model, layers, methods) and whether batch norm was tuned."""
    model = f" of {arch}" if arch else ""
    methods = ", ".join(dict.fromkeys(f"N:M {r['pattern']}" if r["pattern"] else r["method"]
                                      for r in rows))
    kept = sorted({_short(n) for r in rows if r["method"] == "uniform"
                   for n in r.get("dense_layers") or ()})
    scope = "Conv and Linear weights" + (f" (uniform keeps {', '.join(kept)} dense)" if kept else "")
    bnt = ("pruned and pruned + batch-norm tuning (BNT)" if any(r["bnt_top1"] is not None for r in rows)
           else "pruned, no batch-norm tuning")
    return f"One-shot magnitude pruning{model}: {scope}\n{methods}; {bnt}"


def draw(rows: list[dict], arch: str | None = None):
    """The figure (matplotlib, Agg) of `plot_series(rows)`."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(9.5, 5.0), dpi=120)
    for s in plot_series(rows):
        style = dict(color=s.color, label=s.label)
        if not s.x:  # the dense accuracy: a horizontal line across the whole sweep
            ax.axhline(s.y[0], linestyle=s.linestyle, linewidth=1, **style)
            continue
        ax.plot(s.x, s.y, linestyle=s.linestyle or "none", marker=s.marker,
                markersize=6 if s.linestyle else 9, fillstyle="full" if s.filled else "none",
                **style)
    ax.set_xlabel("sparsity of the pruned weights (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(plot_title(rows, arch), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def plot(rows: list[dict], path: str, arch: str | None = None) -> None:
    """Write the figure to `path` (atomically)."""
    fig = draw(rows, arch)
    from matplotlib import pyplot as plt  # after draw() chose the Agg backend
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, bbox_inches="tight")  # "tight": the legend beside the axes is kept
    plt.close(fig)
    os.replace(tmp, path)
