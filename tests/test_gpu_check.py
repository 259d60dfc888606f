"""bench/gpu_check.py --dry-run: every section's script runs (tiny, on the CPU), so the first GPU a
session is lent measures instead of debugging the check. Also the parts of the check that read
results, which a dry run does not reach."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_dry_run_runs_every_section(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.rindex("=== gpu check"):]
    count = len(gpu_check.sections("", "", 0))
    assert f"{count}/{count} sections ok" in table, table
    for name in ("environment", "cuda tests", "kernels", "bracket", "train step", "decode",
                 "end to end", "compile", "compile 160", "largest batch"):
        assert name in table
    assert "\r" not in proc.stdout  # progress-bar frames are dropped from the log
    for text in (proc.stdout, proc.stderr):  # nothing failed, so no traceback anywhere
        assert "Traceback" not in text and "Exception ignored" not in text


def test_unknown_section_is_refused():
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--only", "kernel"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: --only kernel: no such section" in proc.stderr


def test_cuda_test_files_are_found():
    files = gpu_check.cuda_test_files()
    assert "tests/test_triton_kernels.py" in files and "tests/test_gpu_decode.py" in files
    # its CUDA cases come from test_triton_kernels.DEVICES; the file never says mark.cuda
    assert "tests/test_bracket_select.py" in files
    marked = {f for f in files if "mark.cuda" in (ROOT / f).read_text()}
    for f in set(files) - marked:
        assert any(f"from {Path(m).stem} import" in (ROOT / f).read_text() for m in marked), f
    assert "tests/test_masks.py" not in files


def test_report_imports_the_benchmarks_common_without_the_package_on_the_path(tmp_path):
    """The summary ran in a process whose PYTHONPATH named only the ffcv bundle: ffcv_cram must
    come from the repository itself (run 1 on the H200 lost its JSON files to this)."""
    script = f"""
import sys
from types import SimpleNamespace
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
sys.path.insert(0, {str(ROOT / "bench")!r})
try:
    import ffcv_cram
    sys.exit("ffcv_cram is still importable: the test cannot hide it")
except ModuleNotFoundError:
    pass
import gpu_check
sys.exit(gpu_check.report({{"environment": {{"status": "ok", "seconds": 1}}}},
                          SimpleNamespace(dry_run=True), gpu_check.Log(), {str(tmp_path)!r}, 1.0))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={k: v for k, v in os.environ.items()
                                                       if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1/1 sections ok" in proc.stdout


def test_last_error_prefers_pytest_failures():
    output = "\n".join(["FAILED tests/test_a.py::test_b - assert 1 == 2",
                        "KeyError: (Array(uint8, 1, 'C'),)", "1 failed, 3 passed"])
    assert gpu_check.last_error(output).startswith("FAILED tests/test_a.py::test_b")
    assert gpu_check.last_error("x\nerror: no GPU\nbye") == "error: no GPU"
    assert gpu_check.last_error("") == "no output"


def test_headlines_summarise_real_section_results():
    """The summary lines read the JSON the sections wrote on the first H200 run."""
    results = ROOT / "bench" / "results" / "gpu_h200_first_contact"
    kernels = json.loads((results / "run1_bench_topk_kernel_cuda.json").read_text())
    line = gpu_check.headline("kernels", {"data": kernels})
    assert line.startswith("s=0.9: kernels ") and "x floor" in line
    step = json.loads((results / "run1_bench_train_step_cuda.json").read_text())
    line = gpu_check.headline("train step", {"data": step})
    assert "224px" in line and "160px" in line and "host syncs" in line
    e2e = json.loads((results / "run2_gpu_e2e.json").read_text())
    assert gpu_check.headline("end to end", {"data": e2e}).startswith("finished, 10 epochs")


def test_compile_headline_reads_the_benchmarks_result():
    result = json.loads((ROOT / "bench" / "results" / "bench_compile_cpu.json").read_text())
    line = gpu_check.headline("compile", {"data": result})
    assert line.startswith("32px compiled / eager speedup: cram+ global 1.03x, sgd 1.00x")
    assert "CrAM+ compile 93 s" in line and line.endswith("recompiles while timed 0")


def test_bracket_headline_reads_the_benchmarks_result():
    row = lambda pattern, ratio: {"pattern": pattern, "over_radix": ratio,  # noqa: E731
                                  "over_gaussian_radix": ratio + 0.1}
    data = {"masks": [{"sparsity": 0.9, "bracket_s": 2.5e-4, "radix_s": 6e-4}],
            "cliffs": [row("forced miss", 1.5), row("all zero", 1.8), row("all equal", 0.4)],
            "misses": 0, "halves": 300}
    assert gpu_check.headline("bracket", {"data": data}) == (
        "s=0.9 mask 0.250 ms (radix 0.600); forced miss 1.50x radix; worst pattern all zero "
        "1.80x (1.90x Gaussian radix); misses 0/300 real halves")


def test_compile_headline_reads_images_per_second():
    """A case as bench_compile.py writes it now, eager only: its deadline has passed before the
    one compile mode asked for could start (so nothing compiles on this CPU)."""
    import bench_compile
    import torch
    case = bench_compile.case("tiny", "max", 8, 4, torch.device("cpu"), "none", 2, ["default"],
                              candidates=(2, 3), deadline_s=0.0)
    assert case["batch"] == 3 and case["max_batch_probe"]["peak_bytes_by_batch"] == {2: 0, 3: 0}
    assert case["modes_skipped_for_time"] == ["default"] and list(case["cram_over_sgd"]) == ["eager"]
    for name in ("compile", "compile 160", "largest batch"):
        line = gpu_check.headline(name, {"data": {"cases": [case]}})
        assert line.startswith("8px b3 img/s (eager): SGD "), line
        assert "; CrAM+ " in line and "CrAM+/SGD " in line
        assert line.endswith("; skipped for time: default; recompiles while timed 0")
