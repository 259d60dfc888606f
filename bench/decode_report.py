"""bench_decode.py's words: each progress line said (and kept for the log), the seconds since
start, and the report of a GPU run (the JSON saved, the summary table, the log written)."""
import statistics
import time

import torch

import common
from common import environment, save_result, table

from ffcv_cram.atomic import write_text

LOG: list[str] = []
START = time.perf_counter()
TARGETS = {"sgd_of_ceiling": 0.95, "cram_of_ceiling": 0.97, "loader_images_per_s": 15_000,
           "syncs_per_batch": 1, "loader_sm_of_step": 0.05}


def say(line: str = "") -> None:
    print(line, flush=True)
    LOG.append(line)


def elapsed() -> float:
    return time.perf_counter() - START


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _decoder_detail(r: dict) -> str:
    """A decoder case's result in words, its rate apart."""
    if "images_per_s" not in r:
        return r.get("skipped") or r.get("error", "")
    v = r.get("vs_first", {})
    pixels = f"vs first: mean {v['mean_abs_diff']:.2f}, p99 {v['p99_abs_diff']:.0f}" \
        if "mean_abs_diff" in v else "pixels not compared"
    return (f"host {r['host_ms_per_batch']:.1f} ms/batch, refused {r['refused']}/{r['refused_of']}, "
            f"{pixels}: {'ok' if r.get('ok') else 'NO'}")


def _decoder_line(r: dict) -> str:
    rate = f"{r['images_per_s']:,.0f} img/s, " if "images_per_s" in r else ""
    return rate + _decoder_detail(r)


def report(args, ver, auto, loaders, skipped, checks, decode_only, alone, trained, fed_by,
           kernels=None, full=None) -> int:
    mark = {True: "yes", False: "NO", None: "-"}
    kernels = kernels or {}
    best = alone.get(fed_by, {})
    sgd, cram = trained.get("sgd", {}), trained.get("cram", {})
    step_ms = sgd.get("ceiling_step_ms")

    def share(ms):
        return ms / step_ms if ms is not None and step_ms else None
    sm_share = {n: share(k.get("kernel_ms_per_batch")) for n, k in kernels.items()}
    busy_share = {n: share(a["stream_busy_ms_per_batch"]["p50"]) for n, a in alone.items()}

    def met(value, target, above=True):
        return None if value is None else (value >= target if above else value <= target)
    passed = {"sgd_of_ceiling": met(sgd.get("fed_of_ceiling"), TARGETS["sgd_of_ceiling"]),
              "cram_of_ceiling": met(cram.get("fed_of_ceiling"), TARGETS["cram_of_ceiling"]),
              "loader_images_per_s": met(best.get("images_per_s"), TARGETS["loader_images_per_s"]),
              "syncs_per_batch": met(best.get("syncs_per_batch"), TARGETS["syncs_per_batch"], False),
              "loader_sm_of_step": met(sm_share.get(fed_by), TARGETS["loader_sm_of_step"], False)}
    path_json = save_result("bench_decode_cuda", {
        "settings": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in vars(args).items()},
        "run": {"training": {m: {k: t.get(k) for k in ("steps_per_pass", "rounds", "rounds_skipped")}
                             for m, t in trained.items()},
                "feeders": [n for n in ("quick", "full") if n in loaders],
                "order": "per round: ceiling, then each feeder; reversed every other round",
                "full_nvimgcodec": full},
        "versions": ver, "auto_decoder": auto.description, "fed_by": fed_by,
        "decoders": {name: loader.jpeg_decoder for name, loader in loaders.items()},
        "skipped": skipped, "correctness": checks, "decoder_alone": decode_only,
        "loader_alone": alone, "training": trained, "loader_kernels": kernels,
        "loader_sm_of_sgd_step": sm_share, "loader_stream_busy_of_sgd_step": busy_share,
        "targets": TARGETS, "passed": passed})
    env = environment()
    say(f"{env.get('gpu')}, driver {env.get('driver')}, torch {env['torch']}, torchvision "
        f"{ver['torchvision']}, triton {env['triton']}, nvImageCodec {ver['nvimgcodec']}, "
        f"TorchCodec {ver['torchcodec']}, {env['cpu_count']} CPU cores")
    rows = []
    for key, r in decode_only.get("cases", {}).items():
        rows.append([f"decoder: {key}", f"{r['images_per_s']:,.0f} img/s" if "images_per_s" in r
                     else "-", _decoder_detail(r)[:90]])
    for name in ("reference", "quick", "full"):
        if name in skipped:
            rows.append([f"loader alone: {name}", "skipped", skipped[name][:60]])
            continue
        a = alone[name]
        rows.append([f"loader alone: {name}", f"{a['images_per_s']:,.0f} img/s",
                     f"host {a['host_ms_per_batch']['p50']:.1f} ms, syncs {a['syncs_per_batch']}, "
                     f"CPU fallbacks {a['cpu_fallbacks_per_batch']:.2f} per batch"])
    rows.append([f"loader alone: {fed_by} >= 15,000", f"{best.get('images_per_s', 0):,.0f} img/s",
                 mark[passed["loader_images_per_s"]]])
    rows.append(["host syncs per batch <= 1", str(best.get("syncs_per_batch")),
                 mark[passed["syncs_per_batch"]]])
    for name, k in kernels.items():
        ok = met(sm_share.get(name), TARGETS["loader_sm_of_step"], False)
        rows.append([f"loader SM time / SGD step: {name}", _pct(sm_share.get(name)),
                     f"<= 5%: {mark[ok]}; {k['kernel_ms_per_batch']:.2f} ms in "
                     f"{k['kernels_per_batch']:.0f} kernels per batch" if "error" not in k
                     else k["error"][:80]])
    for name, value in busy_share.items():
        rows.append([f"loader stream busy / SGD step: {name}", _pct(value),
                     f"{_ms(alone[name]['stream_busy_ms_per_batch']['p50'])} ms per batch, incl. "
                     "waits on the JPEG engine (not a target)"])
    for method, label, target in (("sgd", "SGD", "sgd_of_ceiling"), ("cram", "CrAM+", "cram_of_ceiling")):
        t = trained.get(method)
        if not t:
            continue
        rates = t["images_per_s"]
        rows.append([f"ResNet-50 {label}: ceiling", f"{statistics.median(rates['ceiling']):,.0f} img/s"
                     if rates["ceiling"] else "-",
                     f"{_ms(t['ceiling_step_ms'])} ms/step; {t['rounds']} round(s) x "
                     f"{t['steps_per_pass']} steps"])
        for name, ratio in t["of_ceiling"].items():
            ok = met(ratio, TARGETS[target])
            waits = t["wait_ms_per_step"][name]
            rows.append([f"ResNet-50 {label}: fed by {name}", _pct(ratio),
                         f">= {100 * TARGETS[target]:.0f}%: {mark[ok]}; wait p50/p99 "
                         f"{_ms(waits['p50'])}/{_ms(waits['p99'])} ms"])
    say(table(rows, ["measurement", "value", "target / detail"]))
    say(f"saved {path_json}")
    # (common.RESULTS read now: the folder save_result wrote the JSON to)
    write_text(str(common.RESULTS / "bench_decode_cuda.log"), "\n".join(LOG) + "\n")
    return 0
