"""Every Triton launch the host code makes compiles for sm_90 and sm_80, without a GPU.

The host functions run on CPU tensors of ResNet-50's shapes with every flag combination the
optimizers use; each launch is compiled (with the specialisation a real launch gets) instead of run,
and assembled by the ptxas bundled with triton (`ffcv_cram.kernels.aot_compile`). The CPU
interpreter tests check what the kernels compute; this checks that they compile, and that the
compiled code keeps the properties the kernels were shaped for.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest

from ffcv_cram.kernels import aot_compile

pytestmark = pytest.mark.slow  # about a minute on two cores
KERNELS = {"_histogram_pass", "_pick_digit", "_count_ties", "_exclusive_scan", "_mark_kept_ties",
           "_apply_threshold", "_nm_select", "_finish"}


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    with ThreadPoolExecutor(len(aot_compile.TARGETS)) as pool:  # one process per target
        tables = pool.map(lambda target: aot_compile.run_in_subprocess([target]),
                          aot_compile.TARGETS)
        rows = [row for rows in tables for row in rows]
    header = ("variant", "arch", "registers", "spill_stores", "spill_loads", "stack", "shared",
              "ld_v4", "ld")
    print("\n" + "\n".join("  ".join(str(r[key]) for key in header) for r in [dict(
        zip(header, header))] + rows))  # the table, for the log (pytest -rA or -s)
    return rows


def test_every_launch_compiles_for_both_targets(compiled):
    for target in aot_compile.TARGETS:
        rows = [r for r in compiled if r["capability"] == target]
        assert {r["variant"].split("[")[0] for r in rows} == KERNELS
        assert len(rows) >= 30  # every flag combination; names differ by their constexprs
    by_target = [sorted(r["variant"] for r in compiled if r["capability"] == target)
                 for target in aot_compile.TARGETS]
    assert all(variants == by_target[0] for variants in by_target)
    assert all(r["registers"] > 0 for r in compiled)  # ptxas -v reported on every variant


def test_compile_targets_hold(compiled):
    assert aot_compile.missed_targets(compiled) == []


def test_aligned_weight_passes_use_128_bit_accesses(compiled):
    weight_passes = [r for r in compiled if r["variant"].startswith(aot_compile.WEIGHT_PASSES)]
    aligned = [r for r in weight_passes if "ALIGNED" in r["variant"]]
    assert aligned and all(r["ld_v4"] > 0 for r in aligned)
    assert any("ALIGNED" not in r["variant"] for r in weight_passes)  # DDP bucket views compile
    assert all(r["atomic_acq_rel"] == 0 for r in compiled)  # histogram atomics are relaxed
