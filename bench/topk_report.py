"""bench_topk_kernel.py's printed tables: the summary of a result and its targets met or not."""
from common import table

TARGETS = {"bracket_max_s": 1e-4, "bracket_over_floor": 3.0, "reference_over_bracket": 30.0,
           "mask_host_s": 1e-4, "optimizer_side_launches": 9, "optimizer_side_fraction": 0.02,
           "cram_over_sgd": 2.02}


def short(kernel):
    for noise in ("void ", "at::native::", "(anonymous namespace)::"):
        kernel = kernel.replace(noise, "")
    return kernel[:56]


def ms(seconds, digits=3):
    return "-" if seconds is None else f"{seconds * 1e3:.{digits}f}"


def ratio(a, b, digits=1):
    return "-" if a is None or b is None else f"{a / b:.{digits}f}x"


def summary(result):
    """The tables, short, last."""
    floor = result["floor_s"]
    lines = [f"copy bandwidth {result['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s (read + write);"
             f" mask floor {ms(floor)} ms ({result['floor_bytes'] / 1e6:.1f} MB)"]
    if result.get("masks"):
        rows = [[m["sparsity"], ms(m["reference_s"]), ms(m["torch_path_s"]), ms(m["radix_s"]),
                 ms(m["bracket_s"]), ms(m["bracket_alone_s"]), ratio(m["bracket_s"], floor, 2),
                 ratio(m["reference_s"], m["bracket_s"]), ratio(m["radix_s"], m["bracket_s"])]
                for m in result["masks"]]
        lines.append(table(rows, ["s", "(a) ref ms", "(b) torch ms", "(c) radix ms",
                                  "(d) bracket ms", "(d) alone ms", "(d)/floor", "(a)/(d)",
                                  "(c)/(d)"]))
        miss = result.get("forced_miss", {})
        lines.append(f"(e) forced miss (exact fallback): {ms(miss.get('median_s'), 1)} ms per call")
    if result.get("bracket_configs"):
        configs = sorted(result["bracket_configs"], key=lambda c: c.get("seconds") or 1e9)
        rows = [[c["sample_copies"], c["sample_stride"], c["full_warps"], c["l1_shift"],
                 "yes" if c["equal"] else "NO", ms(c.get("seconds")), f"{c['candidates']:,}",
                 ", ".join(f"{short(k)} {us:.0f}" for k, us in (c.get("kernels_us") or {}).items())]
                for c in configs]
        lines.append(table(rows, ["copies", "stride", "full warps", "l1 shift", "equal",
                                  "(d) ms", "candidates", "kernels (us)"]))
    where = result.get("where_time_goes")
    if where:
        b = where["bracket_call"]
        lines.append(f"(d) at s=0.9: {b['host_s'] * 1e6:.0f} us host to issue "
                     f"(in the step: {where['first_half_host_s'] * 1e6:.0f} us), "
                     f"{b['device_us']:.0f} us on the GPU in {b['launches']:g} kernels")
        for name in ("fused", "fused + graph"):
            if name not in where:
                continue
            side = where[name]
            lines.append(f"optimizer side, {name}: {side['launches']:g} kernels + "
                         f"{side['copy_launches']:g} copies, {side['device_us']:.0f} us device, "
                         f"{side['host_s'] * 1e6:.0f} us host")
        rows = [[short(name), f"{count:g}", f"{us:.1f}"]
                for name, (count, us) in list(where["fused"]["kernels"].items())[:10]]
        lines.append(table(rows, ["kernel (eager optimizer side)", "per side", "us"]))
    if result.get("bracket_health"):
        rows = [[h["sparsity"], h["calls"], h["misses"], f"{h['candidates_median']:,.0f}"
                 if h["candidates_median"] is not None else "-",
                 "-" if h["spilled_max"] is None else f"{h['spilled_max']:,}"]
                for h in result["bracket_health"]]
        lines.append(table(rows, ["s", "first halves", "misses", "candidates (median)",
                                  "spilled (max)"]))
    step = result.get("step")
    if step:
        rows = [[name, ms(o["step_s"], 2), ms(o["optimizer_side_s"]),
                 ms(o.get("optimizer_side_device_s")), ms(o.get("optimizer_side_host_s")),
                 f"{100 * o['optimizer_side_s'] / o['step_s']:.2f}%",
                 f"{100 * o['optimizer_side_device_s'] / o['step_s']:.2f}%"
                 if o.get("optimizer_side_device_s") else "-",
                 f"{o.get('step_misses', '-')}/{o.get('side_misses', '-')}"]
                for name, o in step.items()]
        lines.append(table(rows, ["CrAM+ b128", "step ms", "side ms", "side device ms",
                                  "side host ms", "side/step", "device/step",
                                  "misses steps/sides"]))
        sgd, floor_sgd = result.get("sgd_s"), result["sgd_floor_s"]
        lines.append(f"fused SGD alone {ms(sgd)} ms vs floor {ms(floor_sgd)} ms "
                     f"({ratio(sgd, floor_sgd)})")
    r = result.get("step_ratio")
    if r:
        rows = [[name, ms(m["median_s"], 1), f"{m['ratio']:.3f}",
                 f"{m['ratio_quartiles'][0]:.3f}-{m['ratio_quartiles'][1]:.3f}"]
                for name, m in r["methods"].items()]
        lines.append(table(rows, [f"TrainStep b{r['batch']} {r['resolution']}px", "ms/step",
                                  "/ SGD", "quartiles"]))
    return "\n".join(lines)


def target_rows(result):
    t, rows = TARGETS, []
    m = {row["sparsity"]: row for row in result.get("masks") or []}.get(0.9)
    if m:
        rows += [["(d) at s=0.9", ms(m["bracket_s"]), f"<= {ms(t['bracket_max_s'])} ms",
                  m["bracket_s"] <= t["bracket_max_s"]],
                 ["(d) / floor", ratio(m["bracket_s"], result["floor_s"], 2),
                  f"<= {t['bracket_over_floor']:g}x",
                  m["bracket_s"] / result["floor_s"] <= t["bracket_over_floor"]],
                 ["(a) / (d)", ratio(m["reference_s"], m["bracket_s"]),
                  f">= {t['reference_over_bracket']:g}x",
                  m["reference_s"] / m["bracket_s"] >= t["reference_over_bracket"]]]
    where = result.get("where_time_goes")
    if where:
        host = where["bracket_call"]["host_s"]
        rows += [["(d) host to issue", ms(host), f"<= {ms(t['mask_host_s'])} ms",
                  host <= t["mask_host_s"]],
                 ["kernels per optimizer side", f"{where['fused']['launches']:g}",
                  f"<= {t['optimizer_side_launches']}",
                  where["fused"]["launches"] <= t["optimizer_side_launches"]]]
    health = result.get("bracket_health")
    if health:
        misses, calls = sum(h["misses"] for h in health), sum(h["calls"] for h in health)
        rows.append(["bracket misses", f"{misses}/{calls}", "rare (<= 1%)",
                     misses <= 0.01 * calls])
    for name, o in (result.get("step") or {}).items():
        if name != "torch path":
            share = o["optimizer_side_s"] / o["step_s"]
            rows.append([f"side/step ({name})", f"{100 * share:.2f}%",
                         f"< {100 * t['optimizer_side_fraction']:g}%",
                         share < t["optimizer_side_fraction"]])
    for name, s in ((result.get("step_ratio") or {}).get("methods") or {}).items():
        if name != "sgd":
            rows.append([f"{name} / SGD", f"{s['ratio']:.3f}", f"<= {t['cram_over_sgd']}",
                         s["ratio"] <= t["cram_over_sgd"]])
    return [[a, b, c, "yes" if ok else "NO"] for a, b, c, ok in rows]
