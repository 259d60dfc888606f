"""The cost study's summary (mean ± std per setting), its decision, table and plot.

Cost: a run's training time (the sum of its epoch times: no start-up, decoding or evaluation)
over SGD's on the same seed, measured in the same study; mean ± std over seeds. Gain kept at
90 %: (setting - SGD) / (CrAM+ - SGD) of the mean top-1 after one-shot global 90 % + BNT, over
the seeds where all three ran (none where CrAM+ gained nothing).
"""
from __future__ import annotations

import statistics
from pathlib import Path

ACCURACY_KEYS = ("0.8", "0.9", "0.95", "2:4")
TARGET = {"cost_ratio": 1.5, "gain_kept": 0.9, "at": "0.9"}


def mean_std(values: list[float]) -> list[float]:
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarise(runs: list[dict], names: list[str]) -> list[dict]:
    by = {(r["setting"], r["seed"]): r for r in runs}
    at = TARGET["at"]
    rows = []
    for name in names:
        mine = [r for r in runs if r["setting"] == name]
        if not mine:
            continue
        seeds = [r["seed"] for r in mine]
        ratios = [by[(name, s)]["train_s"] / by[("sgd", s)]["train_s"] for s in seeds
                  if ("sgd", s) in by]
        row = {"setting": name, "seeds": seeds, "cost_ratio": mean_std(ratios) if ratios else None,
               "train_s": mean_std([r["train_s"] for r in mine]),
               "full_steps": mean_std([r["full_steps"] for r in mine]),
               "dense_top1": mean_std([r["dense_top1"] for r in mine]),
               "bnt_top1": {k: mean_std([r["bnt_top1"][k] for r in mine]) for k in ACCURACY_KEYS},
               "gain_kept_at_90": None}
        both = [s for s in seeds if ("sgd", s) in by and ("cram+", s) in by]
        if both:
            sgd = statistics.mean(by[("sgd", s)]["bnt_top1"][at] for s in both)
            full = statistics.mean(by[("cram+", s)]["bnt_top1"][at] for s in both) - sgd
            own = statistics.mean(by[(name, s)]["bnt_top1"][at] for s in both) - sgd
            row["gain_kept_at_90"] = own / full if full > 0 else None  # no gain: nothing to keep
        rows.append(row)
    return rows


def decision(rows: list[dict]) -> dict:
    """Which cheaper settings cost <= 1.5x SGD and keep >= 90 % of CrAM+'s gain at 90 % + BNT."""
    setting = {r["setting"]: r for r in rows}
    gain = None
    if "sgd" in setting and "cram+" in setting:
        gain = (setting["cram+"]["bnt_top1"][TARGET["at"]][0]
                - setting["sgd"]["bnt_top1"][TARGET["at"]][0])
    meets = [r["setting"] for r in rows if r["setting"] not in ("sgd", "cram+")
             and r["cost_ratio"] is not None and r["gain_kept_at_90"] is not None
             and r["cost_ratio"][0] <= TARGET["cost_ratio"]
             and r["gain_kept_at_90"] >= TARGET["gain_kept"]]
    return {"target": TARGET, "cram_plus_gain_at_90": gain, "meets_target": meets,
            "answer": ("no: CrAM+ gained nothing over SGD here, so nothing is kept"
                       if gain is not None and gain <= 0 else
                       f"yes: {', '.join(meets)}" if meets else "no setting meets the target")}


def _ms(pair, scale=1.0, digits=1) -> str:
    return "-" if pair is None else f"{pair[0] * scale:.{digits}f} ± {pair[1] * scale:.{digits}f}"


def table_markdown(rows: list[dict], verdict: dict) -> str:
    header = ["setting", "seeds", "cost / SGD", "dense top-1", "80 % + BNT", "90 % + BNT",
              "95 % + BNT", "2:4 + BNT", "gain kept at 90 %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        kept = r["gain_kept_at_90"]
        lines.append("| " + " | ".join([
            r["setting"], str(len(r["seeds"])), _ms(r["cost_ratio"], digits=2),
            _ms(r["dense_top1"]), *(_ms(r["bnt_top1"][k]) for k in ACCURACY_KEYS),
            "-" if kept is None else f"{100 * kept:.0f} %"]) + " |")
    lines += ["", f"Target: cost <= {TARGET['cost_ratio']}x SGD and >= {TARGET['gain_kept']:.0%} "
                  f"of CrAM+'s gain over SGD at 90 % + BNT. Answer: {verdict['answer']}", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    marks = {"sgd": ("s", "black"), "cram+": ("D", "tab:red")}  # the references stand out
    others = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
                   "tab:olive", "tab:cyan"] * 4)
    for r in rows:
        if r["cost_ratio"] is None:
            continue
        (x, dx), (y, dy) = r["cost_ratio"], r["bnt_top1"][TARGET["at"]]
        marker, color = marks.get(r["setting"]) or ("o", next(others))
        ax.errorbar(x, y, xerr=dx, yerr=dy, fmt=marker, color=color, capsize=3)
        ax.annotate(f"{r['setting']} (n={len(r['seeds'])})", (x, y), fontsize=8,
                    xytext=(5, 3), textcoords="offset points")
    ax.axvline(TARGET["cost_ratio"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"training time / SGD's (same study, {device})")
    ax.set_ylabel("top-1 (%), one-shot global 90 % + BNT")
    ax.set_title("CrAM cost study: accuracy at 90 % sparsity vs cost (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")  # atomic: a rename
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
