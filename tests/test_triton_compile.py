"""Every Triton launch the host code makes compiles for sm_90 and sm_80, without a GPU.

The host functions run on CPU tensors of ResNet-50's shapes with every flag combination the
optimizers use; each launch is compiled (with the specialisation a real launch gets) instead of run,
and assembled by the ptxas bundled with triton (`ffcv_cram.kernels.aot_compile`). The CPU
interpreter tests check what the kernels compute; this checks that they compile, and that the
compiled code keeps the properties the kernels were shaped for -- with the installed triton and
with triton 3.6 (what GPU images ship with torch 2.11), which `make test` installs into
build/triton36 beside the virtualenv: the two lower the same kernel very differently.
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ffcv_cram.kernels import aot_compile

pytestmark = pytest.mark.slow  # about two minutes on two cores
TRITON36 = Path(__file__).resolve().parents[1] / "build" / "triton36"
KERNELS = {"_histogram_pass", "_pick_digit", "_count_ties", "_exclusive_scan", "_mark_kept_ties",
           "_apply_threshold", "_nm_select", "_finish", "_sample", "_full", "_pick", "_resolve",
           "_fine_histogram", "_scan_ties", "_settle_masks"}
# the bracket select's sample, resolve, fine histogram and tie scan launches count their finished
# programs (the last one does the rest) with one acq_rel atomic each
LAST_PROGRAM_COUNTERS = ("_sample", "_resolve", "_fine_histogram", "_scan_ties")


def builds():
    if not (TRITON36 / "triton").is_dir():
        pytest.fail(f"{TRITON36}: no triton 3.6 there; `make test` installs it "
                    "(pip install --no-deps --target build/triton36 triton==3.6.0)")
    return [None, str(TRITON36)]


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    jobs = [(build, target) for build in builds() for target in aot_compile.TARGETS]
    with ThreadPoolExecutor(2) as pool:  # each compile in a process of its own
        tables = pool.map(lambda job: aot_compile.run_in_subprocess([job[1]], job[0]), jobs)
        rows = [row for rows in tables for row in rows]
    header = ("variant", "triton", "arch", "registers", "spill_stores", "spill_loads", "stack",
              "shared", "ld_v4", "ld", "ballots")
    print("\n" + "\n".join("  ".join(str(r[key]) for key in header) for r in [dict(
        zip(header, header))] + rows))  # the table, for the log (pytest -rA or -s)
    return rows


def test_every_launch_compiles_for_both_targets_and_tritons(compiled):
    versions = {r["triton"] for r in compiled}
    assert len(versions) == 2 and "3.6.0" in versions
    for version in versions:
        for target in aot_compile.TARGETS:
            rows = [r for r in compiled if r["capability"] == target and r["triton"] == version]
            assert {r["variant"].split("[")[0] for r in rows} == KERNELS
            assert len(rows) >= 30  # every flag combination; names differ by their constexprs
        by_target = [sorted(r["variant"] for r in compiled
                            if r["capability"] == target and r["triton"] == version)
                     for target in aot_compile.TARGETS]
        assert all(variants == by_target[0] for variants in by_target)
    assert all(r["registers"] > 0 for r in compiled)  # ptxas -v reported on every variant


def test_compile_targets_hold(compiled):
    # no spills on sm_90; weight passes within 128 registers; the default step's passes without
    # warp ballots (what tl.histogram becomes on triton 3.6)
    assert aot_compile.missed_targets(compiled) == []
    step_passes = [r for r in compiled if r["variant"].startswith(aot_compile.STEP_PASSES)]
    assert {r["triton"] for r in step_passes} == {r["triton"] for r in compiled}


def test_aligned_weight_passes_use_128_bit_accesses(compiled):
    weight_passes = [r for r in compiled if r["variant"].startswith(aot_compile.WEIGHT_PASSES)]
    aligned = [r for r in weight_passes if "ALIGNED" in r["variant"]]
    assert aligned and all(r["ld_v4"] > 0 for r in aligned)
    assert any("ALIGNED" not in r["variant"] for r in weight_passes)  # DDP bucket views compile


def test_atomics_are_relaxed_but_the_last_program_counters(compiled):
    for r in compiled:
        limit = 1 if r["variant"].startswith(LAST_PROGRAM_COUNTERS) else 0
        assert r["atomic_acq_rel"] <= limit, r["variant"]
