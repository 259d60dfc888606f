"""bench/bench_decode.py's report, which only a GPU run reaches: the JSON it saves, its table, and
gpu_check's summary line read from that JSON (the dry run covers the measuring code)."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_decode  # noqa: E402
import common  # noqa: E402
import gpu_check  # noqa: E402
from ffcv_cram.data import jpeg_decoders  # noqa: E402


def alone(rate, syncs=0.0):
    return {"images_per_s": rate, "host_ms_per_batch": {"p50": 3.1, "p99": 6.0},
            "stream_busy_ms_per_batch": {"p50": 30.0, "p99": 31.0}, "syncs_per_batch": syncs,
            "cpu_fallbacks_per_batch": 0.0}


def trained(ceiling, fed: dict):
    rates = {"ceiling": [ceiling] * 2, **{name: [rate] * 2 for name, rate in fed.items()}}
    return {"steps_per_pass": 100, "rounds": 2, "rounds_skipped": 0, "images_per_s": rates,
            "of_ceiling": {name: rate / ceiling for name, rate in fed.items()},
            "of_ceiling_rounds": {name: [rate / ceiling] * 2 for name, rate in fed.items()},
            "wait_ms_per_step": {name: {"p50": 0.1, "p99": 2.0} for name in fed},
            "ceiling_step_ms": 1000 * 256 / ceiling, "fed_by": "full",
            "fed_of_ceiling": fed["full"] / ceiling}


def test_report_saves_what_the_summary_line_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_decode, "RESULTS", tmp_path)
    args = SimpleNamespace(images=4096, batch_size=256, resolution=176, dtype=torch.bfloat16)
    loaders = {"reference": SimpleNamespace(jpeg_decoder="torchvision's decode_jpeg"),
               "quick": SimpleNamespace(jpeg_decoder="torchvision's decode_jpeg"),
               "full": SimpleNamespace(jpeg_decoder="nvImageCodec 0.8.0 on the GPU (region decode)")}
    clean = {"mean_abs_diff": 0.0, "p99_abs_diff": 0.0, "max_abs_diff": 0, "ok": True,
             "case": "nvimgcodec shipped, whole"}
    decode_only = {"cases": {
        "nvimgcodec hw, regions": {"kind": "nvimgcodec", "backends": "hw_gpu_only", "threads": 16,
                                   "regions": True, "images_per_s": 21000.0, "host_ms_per_batch": 9.0,
                                   "refused": 0, "refused_of": 1024, "vs_first": clean, "ok": True},
        "nvimgcodec gpu, regions": {"kind": "nvimgcodec", "error": "RuntimeError: no decoder"},
        "torchvision, whole": {"kind": "torchvision", "skipped": "--decoder-seconds spent"}}}
    kernels = {"quick": {"kernel_ms_per_batch": 0.9, "kernels_per_batch": 3.0, "copy_ms_per_batch": 0.1},
               "full": {"kernel_ms_per_batch": 1.5, "kernels_per_batch": 5.0, "copy_ms_per_batch": 0.1}}
    code = bench_decode.report(
        args, {"torchvision": "0.26", "nvimgcodec": "0.8.0", "torchcodec": "unavailable"},
        SimpleNamespace(description="nvImageCodec 0.8.0"), loaders, {},
        {name: {"ok": True} for name in loaders}, decode_only,
        {"reference": alone(11000, 2.0), "quick": alone(14000), "full": alone(17000)},
        {"sgd": trained(7000, {"quick": 6500, "full": 6720}),
         "cram": trained(3500, {"quick": 3300, "full": 3420})}, "full", kernels,
        {"backends": "hw_gpu_only", "regions": True, "case": "nvimgcodec hw, regions", "why": "fastest"})
    assert code == 0
    out = capsys.readouterr().out
    assert "loader alone: full" in out and "ResNet-50 CrAM+: fed by full" in out
    assert "ResNet-50 SGD: fed by quick" in out and "decoder: nvimgcodec hw, regions" in out
    assert "RuntimeError: no decoder" in out
    data = json.loads((tmp_path / "bench_decode_cuda.json").read_text())
    assert data["passed"] == {"sgd_of_ceiling": True, "cram_of_ceiling": True,
                              "loader_images_per_s": True, "syncs_per_batch": True,
                              "loader_sm_of_step": True}
    step_ms = 1000 * 256 / 7000
    assert data["loader_sm_of_sgd_step"]["full"] == pytest.approx(1.5 / step_ms)
    assert data["loader_stream_busy_of_sgd_step"]["full"] == pytest.approx(30.0 / step_ms)
    assert data["run"]["training"]["sgd"] == {"steps_per_pass": 100, "rounds": 2, "rounds_skipped": 0}
    line = gpu_check.headline("decode", {"data": data})
    assert line.startswith("full (nvImageCodec 0.8.0 on the GPU (region decode)): 17,000 img/s")
    assert line.endswith("of the ceiling: SGD 96.0%; CrAM+ 97.7%")


def test_pixel_diff_crops_the_reference_to_each_region_and_counts_exactly():
    reference = [torch.arange(3 * 6 * 8, dtype=torch.int64).reshape(3, 6, 8).remainder(256).to(torch.uint8)
                 for _ in range(2)]
    boxes = np.array([[1, 2, 3, 4], [0, 0, 6, 8]])
    regions = [reference[0][:, 1:4, 2:6].clone(), reference[1].clone()]
    regions[1][0, 0, 0] += 5  # one pixel of 2 * 3 * (12 + 48) off by 5
    diff = bench_decode.pixel_diff(regions, reference, boxes, regions=True)
    assert diff["compared"] == 2 and diff["max_abs_diff"] == 5 and diff["p99_abs_diff"] == 0
    assert diff["mean_abs_diff"] == pytest.approx(5 / (3 * 12 + 3 * 48)) and diff["ok"]
    wrong = bench_decode.pixel_diff([regions[0], None], reference, boxes, regions=False)
    assert wrong["mismatched"] == 1 and wrong["missing"] == 1 and not wrong["ok"]


def test_full_takes_the_fastest_clean_nvimgcodec_case_at_the_loaders_threads():
    args = SimpleNamespace(workers=16)
    case = lambda rate, ok=True, threads=16, regions=True, backends="hw_gpu_only": {  # noqa: E731
        "kind": "nvimgcodec", "backends": backends, "threads": threads, "regions": regions,
        "images_per_s": rate, "ok": ok}
    cases = {"hw, whole": case(30000, regions=False), "hw, regions": case(40000, ok=False),
             "shipped, 1 threads": case(50000, threads=1, backends="x"),
             "hybrid, regions": case(20000, backends="hybrid_cpu_gpu"),
             "torchvision, whole": {"kind": "torchvision", "images_per_s": 60000.0, "ok": True}}
    full = bench_decode.choose_full({"cases": cases}, args)
    assert (full["case"], full["backends"], full["regions"]) == ("hw, whole", "hw_gpu_only", False)
    none = bench_decode.choose_full({"cases": {"hw, regions": case(40000, ok=False)}}, args)
    assert none["case"] is None and none["backends"] == jpeg_decoders.NVIMGCODEC_BACKENDS


def test_nvimgcodec_backend_lists_parse_and_reach_the_decoder(monkeypatch):
    assert jpeg_decoders.parse_backends("HW_GPU_ONLY:0.75, hybrid_cpu_gpu") == (
        ("hw_gpu_only", 0.75), ("hybrid_cpu_gpu", 1.0))
    for bad in ("hw", "hw_gpu_only:1.5", "gpu_only:x"):
        with pytest.raises(ValueError, match="FFCV_CRAM_NVIMGCODEC_BACKENDS"):
            jpeg_decoders.parse_backends(bad)

    made = {}

    class Decoder:
        def __init__(self, **kwargs):
            made.update(kwargs)

    kinds = SimpleNamespace(HW_GPU_ONLY="HW", GPU_ONLY="GPU", HYBRID_CPU_GPU="HYBRID", CPU_ONLY="CPU")
    fake = SimpleNamespace(__version__="0.8.0", __cuda_version__=13000, BackendKind=kinds,
                           Backend=lambda kind, **kw: (kind, kw.get("load_hint", 1.0)),
                           Decoder=Decoder, DecodeParams=lambda **kw: kw,
                           ColorSpec=SimpleNamespace(SRGB="srgb"))
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", fake)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("FFCV_CRAM_NVIMGCODEC_BACKENDS", "hw_gpu_only:0.75,hybrid_cpu_gpu")
    decoder = jpeg_decoders.NvImageCodecDecoder("cuda:0", 4, probe=False)
    assert made["backends"] == [("HW", 0.75), ("HYBRID", 1.0)] and made["max_num_cpu_threads"] == 4
    assert "backends hw_gpu_only:0.75,hybrid_cpu_gpu" in decoder.description
    jpeg_decoders.NvImageCodecDecoder("cuda:0", 0, backends=jpeg_decoders.NVIMGCODEC_BACKENDS,
                                      probe=False)
    assert made["backends"] == [("HW", 1.0), ("GPU", 1.0), ("HYBRID", 1.0)]
