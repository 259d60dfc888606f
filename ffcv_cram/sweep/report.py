"""Sweep results as a printed table, results.json, results.csv and accuracy_vs_sparsity.png."""
from __future__ import annotations

import csv
import io
import json
import os

from ..atomic import write_text
from .plot import plot

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


def write_reports(rows: list[dict], out_dir: str, arch: str | None = None) -> dict:
    """Write every output (`arch`: the model, named in the plot's title); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"),
             "csv": os.path.join(out_dir, "results.csv"),
             "png": os.path.join(out_dir, "accuracy_vs_sparsity.png")}
    write_text(paths["json"], json.dumps(rows, indent=1) + "\n")
    write_text(paths["csv"], to_csv(rows))
    plot(rows, paths["png"], arch)
    return paths
