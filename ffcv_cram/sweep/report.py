"""Sweep results as a printed table, results.json, results.csv and accuracy_vs_sparsity.png."""
from __future__ import annotations

import csv
import io
import json
import os

from ..atomic import write_text

COLUMNS = ["label", "method", "sparsity", "pattern", "dense_top1", "pruned_top1", "bnt_top1",
           "dense_top5", "pruned_top5", "bnt_top5", "achieved_sparsity", "model_sparsity"]
CSV_COLUMNS = ["label", "checkpoint", "method", "sparsity", "pattern", "dense_top1", "dense_top5",
               "pruned_top1", "pruned_top5", "bnt_top1", "bnt_top5", "achieved_sparsity",
               "prunable_sparsity", "model_sparsity", "time_prune_s", "time_pruned_eval_s",
               "time_bnt_s", "time_bnt_eval_s"]


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key.endswith("sparsity"):
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def text_table(rows: list[dict]) -> str:
    header = ["checkpoint", "method", "target", "pattern", "dense", "pruned", "pruned+BNT",
              "dense@5", "pruned@5", "BNT@5", "achieved", "whole model"]
    cells = [header] + [[_cell(k, r[k]) for k in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(top-1 accuracy in %, @5: top-5; sparsity of the pruned layers and of all parameters)"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def plot(rows: list[dict], path: str) -> None:
    """One colour per checkpoint: pruned (dashed), pruned + BNT (solid), dense (dotted line)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for i, label in enumerate(labels):
        color = colors[i % len(colors)]
        mine = [r for r in rows if r["label"] == label]
        ax.axhline(mine[0]["dense_top1"], color=color, linestyle=":", linewidth=1,
                   label=f"{label} dense")
        curve = sorted((r for r in mine if r["pattern"] is None), key=lambda r: r["sparsity"])
        if curve:
            xs = [100 * r["sparsity"] for r in curve]
            ax.plot(xs, [r["pruned_top1"] for r in curve], "--o", color=color, markersize=4,
                    label=f"{label} pruned")
            if curve[0]["bnt_top1"] is not None:  # None: swept without batch-norm tuning
                ax.plot(xs, [r["bnt_top1"] for r in curve], "-o", color=color, markersize=5,
                        label=f"{label} pruned + BNT")
        for r in (r for r in mine if r["pattern"] is not None):
            ax.plot([100 * r["sparsity"]], [r["pruned_top1"]], "x", color=color, markersize=8)
            if r["bnt_top1"] is not None:
                ax.plot([100 * r["sparsity"]], [r["bnt_top1"]], "*", color=color, markersize=11)
            top = r["pruned_top1"] if r["bnt_top1"] is None else r["bnt_top1"]
            ax.annotate(r["pattern"], (100 * r["sparsity"], top), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
    ax.set_xlabel("sparsity (%)  [x / *: N:M pruned / + BNT]")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("One-shot pruning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_reports(rows: list[dict], out_dir: str) -> dict:
    """Write every output; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"),
             "csv": os.path.join(out_dir, "results.csv"),
             "png": os.path.join(out_dir, "accuracy_vs_sparsity.png")}
    write_text(paths["json"], json.dumps(rows, indent=1) + "\n")
    write_text(paths["csv"], to_csv(rows))
    plot(rows, paths["png"])
    return paths
