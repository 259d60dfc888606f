"""Everything we need to know from a GPU, in one run: `make gpu-check` (or python bench/gpu_check.py).

Sections, in this order, each a subprocess with its own time limit; a failing section is recorded
with its error and the next one runs:
  1. environment    GPU, driver, CUDA, versions, whether nvJPEG uses the hardware JPEG decoder
  2. cuda tests     pytest -m cuda (kernels equal to the torch path at ResNet-50 scale, nvJPEG
                    decode equal to the CPU decode, the sync-free training step)
  3. kernels        mask selection: reference vs torch path vs fused kernels vs the bandwidth
                    floor; the optimizer-side share of a ResNet-50 CrAM+ step
  4. bracket        the bracket select's cliffs: mask time with the defaults vs radix, a forced
                    miss and exact-tie patterns vs radix, misses over 300 real first halves
  5. train step     ResNet-50 bf16 channels_last batch 256 at 224 and 160 px: SGD vs CrAM+ global
                    vs CrAM+ N:M images/s and peak memory; CrAM+ steps under sync debug mode
  6. decode         GPU decode + augmentation vs FFCV's CPU decode, alone and feeding ResNet-50
  7. end to end     train_imagenet.py with --data.decode=gpu, the fused step, bf16
  8. compile        ResNet-50 bf16 channels_last batch 256, 224 px, GPU-resident tensors: SGD and
                    CrAM+ images/s eager vs torch.compile vs torch.compile + CUDA graphs
                    (reduce-overhead), peak memory of each, CrAM+'s compile cost, recompiles while
                    timed (last, so that its minutes of compiling never starve the sections before it)
  9. compile 160    the same at 160 px (the progressive-resolution recipes' first epochs)
 10. largest batch  224 px at the largest batch whose eager CrAM+ step fits in 90 % of the GPU:
                    eager vs compiled images/s (its LR scales with the batch: --lr.scaling)
Sections 1-5 and 8-10 need torch and triton only; 6-7 need ffcv. Without ffcv, a bundle made by
bench/pack_ffcv.sh at build/ffcv_carry.tar.xz is installed into a temporary folder first. The
three compile sections take more than the default budget after the others: run them on their own
with --only compile "compile 160" "largest batch".

Writes bench/results/gpu_check_<gpu>.json and .log (plus each section's own JSON) and prints a
table last. `--dry-run` runs every section's script on the CPU with tiny inputs (no timing,
nothing saved under bench/results): the test suite's check that this script works.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPOSITORY = BENCH.parent
BUNDLE = REPOSITORY / "build" / "ffcv_carry.tar.xz"


@dataclass
class Section:
    name: str
    args: list            # after the interpreter
    dry_args: list        # replaces `args` under --dry-run
    limit_s: float        # at most this long (less if the run's budget is nearly spent)
    results: tuple        # JSON files the section saves (read back into the summary)
    needs_ffcv: bool = False
    env: dict = field(default_factory=dict)
    dry_env: dict = field(default_factory=dict)


def cuda_test_files() -> list[str]:
    """Test files with CUDA tests (collecting only those keeps the check independent of packages
    the other tests import): those that mark tests `cuda`, and those that import from such a
    test module (a shared parametrisation such as test_triton_kernels.DEVICES)."""
    texts = {p.stem: p.read_text() for p in (REPOSITORY / "tests").glob("test_*.py")}
    marked = {name for name, text in texts.items() if "mark.cuda" in text}
    shared = {name for name, text in texts.items()
              if marked & set(re.findall(r"^\s*(?:from|import)\s+(test_\w+)", text, re.MULTILINE))}
    return sorted(f"tests/{name}.py" for name in marked | shared)


def sections(data_dir: str, work: str, e2e_seconds: float) -> list[Section]:
    junit = os.path.join(work, "cuda_tests.xml")
    return [
        Section("environment", ["bench/gpu_env.py"], ["bench/gpu_env.py", "--dry-run"], 60,
                ("gpu_env",)),
        Section("cuda tests", ["-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                               f"--junitxml={junit}", *cuda_test_files()],
                ["-m", "pytest", "-q", "-m", "cuda", "--collect-only", "-p", "no:cacheprovider",
                 *cuda_test_files()], 180, ()),
        Section("kernels", ["bench/bench_topk_kernel.py", "--repeats", "20"],
                ["bench/bench_topk_kernel.py", "--smoke"], 180, ("bench_topk_kernel_cuda",),
                dry_env={"TRITON_INTERPRET": "1"}),
        Section("bracket", ["bench/bench_bracket_cliffs.py"],
                ["bench/bench_bracket_cliffs.py", "--dry-run"], 180,
                ("bench_bracket_cliffs_cuda",), dry_env={"TRITON_INTERPRET": "1"}),
        Section("train step", ["bench/bench_train_step.py", "--cpu-rounds", "0", "--gpu-batch",
                               "256", "--gpu-resolutions", "224", "160", "--gpu-rounds", "15",
                               "--methods", "sgd", "cram+ global", "cram+ n:m",
                               "--sync-check", "10"],
                ["bench/bench_train_step.py", "--dry-run", "--methods", "sgd", "cram+ global",
                 "cram+ n:m"], 150, ("bench_train_step_cuda",)),
        Section("decode", ["bench/bench_decode.py", "--images", "4096", "--repeats", "2",
                           "--train-steps", "80", "--cram-steps", "40", "--loader-steps", "60",
                           "--warmup", "8", "--deadline-s", "140", "--data-dir", data_dir],
                ["bench/bench_decode.py", "--dry-run", "--workers", "1", "--data-dir", data_dir],
                155, ("bench_decode_cuda",), needs_ffcv=True),
        Section("end to end", ["bench/gpu_e2e.py", "--seconds", str(e2e_seconds), "--data-dir",
                               data_dir],
                ["bench/gpu_e2e.py", "--dry-run", "--workers", "1", "--data-dir", data_dir],
                e2e_seconds + 90, ("gpu_e2e",), needs_ffcv=True),
        *compile_sections(),
    ]


def compile_sections() -> list[Section]:
    """bench_compile.py per resolution and batch, one JSON each. Their dry runs but the first time
    only the eager steps (no --modes): the first compiles, and the script is the same."""
    # a compile mode that would end past ~130 s is skipped, so a slow compile still leaves JSON
    compiled = ["--cpu-rounds", "0", "--gpu-rounds", "15", "--deadline-s", "130"]
    return [
        Section("compile", ["bench/bench_compile.py", *compiled, "--gpu-batch", "256",
                            "--gpu-resolutions", "224", "--modes", "default", "reduce-overhead",
                            "--tag", "_224"],
                ["bench/bench_compile.py", "--dry-run"], 180, ("bench_compile_cuda_224",)),
        Section("compile 160", ["bench/bench_compile.py", *compiled, "--gpu-batch", "256",
                                "--gpu-resolutions", "160", "--modes", "default",
                                "reduce-overhead", "--tag", "_160"],
                ["bench/bench_compile.py", "--dry-run", "--modes"], 180,
                ("bench_compile_cuda_160",)),
        Section("largest batch", ["bench/bench_compile.py", *compiled, "--gpu-batch", "max",
                                  "--gpu-resolutions", "224", "--modes", "default",
                                  "--tag", "_max_batch"],
                ["bench/bench_compile.py", "--dry-run", "--gpu-batch", "max", "--modes"], 180,
                ("bench_compile_cuda_max_batch",)),
    ]


class Log:
    """Everything printed, also kept for the .log file."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(text.splitlines() or [""])


def install_ffcv_bundle(bundle: Path, work: str, log: Log) -> dict:
    """Unpack a bench/pack_ffcv.sh bundle into `work`; returns the environment that finds it."""
    with tarfile.open(bundle) as tar:
        tar.extractall(work, filter="data")
    root = Path(work) / "ffcv_carry"
    site = Path(work) / "site"
    wheels = sorted(str(w) for w in (root / "wheels").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--target", str(site), *wheels], check=True)
    log(f"ffcv bundle: installed {len(wheels)} wheels from {bundle.relative_to(REPOSITORY)}")
    return {"PYTHONPATH": str(site), "LD_LIBRARY_PATH": str(root / "lib")}


def ffcv_problem(env: dict) -> str | None:
    probe = subprocess.run([sys.executable, "-c", "import ffcv.libffcv, ffcv.loader, fastargs"],
                           env=env, capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    lines = probe.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {probe.returncode}"


def prepend(env: dict, extra: dict) -> dict:
    out = dict(env)
    for key, value in extra.items():
        out[key] = value + (os.pathsep + out[key] if out.get(key) else "")
    return out


def run_section(section: Section, dry_run: bool, env: dict, limit_s: float, log: Log) -> dict:
    args = section.dry_args if dry_run else section.args
    env = {**env, **(section.dry_env if dry_run else section.env)}
    log(f"\n=== {section.name}: python {' '.join(args)}")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *args], cwd=REPOSITORY, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=limit_s)
        output, code = proc.stdout, proc.returncode
        status = "ok" if code == 0 else f"failed (exit status {code})"
    except subprocess.TimeoutExpired as err:
        output = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        status = f"timed out after {limit_s:.0f} s"
    log(re.sub(r"[^\n]*\r(?!\n)", "", output).rstrip())  # progress-bar frames: keep the last
    seconds = time.perf_counter() - start
    out = {"status": status, "seconds": round(seconds, 1)}
    if status != "ok":
        out["error"] = last_error(output)
    return out


def last_error(output: str) -> str:
    """The line that says what went wrong: pytest's failures first, then the last error."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for pattern in (r"^(FAILED|ERROR) ", r"^(\w+(\.\w+)*(Error|Exception)\b|error:)"):
        hits = [line for line in lines if re.match(pattern, line)]
        if hits:
            return "; ".join(hits)[:300]
    return lines[-1][:300] if lines else "no output"


def junit_counts(path: str) -> dict:
    import xml.etree.ElementTree as ElementTree
    if not os.path.exists(path):
        return {}
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["failed_tests"] = [f"{case.get('classname')}::{case.get('name')}"
                              for case in suite.iter("testcase")
                              if case.find("failure") is not None or case.find("error") is not None]
    return counts


def headline(name: str, result: dict) -> str:
    """One short line of the numbers that matter, from a section's JSON."""
    data = result.get("data", {})
    try:
        if name == "environment":
            e, n = data["environment"], data["nvjpeg"]
            hw = n.get("hardware_decoder_used")
            return (f"{e.get('gpu')}, driver {e.get('driver')}, torch {e['torch']}, triton "
                    f"{e['triton']}; nvJPEG hardware decoder: {hw}")
        if name == "cuda tests":
            c = result.get("tests", {})
            return (f"{c.get('tests', 0)} run, {c.get('failures', 0)} failed, "
                    f"{c.get('errors', 0)} errors, {c.get('skipped', 0)} skipped")
        if name == "kernels":
            m = {row["sparsity"]: row for row in data["masks"]}[0.9]
            if "bracket_s" in m:  # issue 22's benchmark: the bracket select
                return kernels_headline(data, m)
            fused = data["step"]["fused"]
            line = (f"s=0.9: kernels {m['kernels_s'] * 1e3:.2f} ms = "
                    f"{m['kernels_s'] / data['floor_s']:.1f}x floor, "
                    f"{m['reference_s'] / m['kernels_s']:.1f}x faster than the reference; "
                    f"optimizer side {100 * fused['optimizer_side_s'] / fused['step_s']:.1f}% "
                    "of the step")
            split = data.get("fused_masks_breakdown", {})
            if "device_us_per_call" in split:
                line += (f"; {split['host_s'] * 1e3:.2f} ms host to issue, "
                         f"{sum(split['device_us_per_call'].values()) / 1e3:.2f} ms on the GPU")
            return line
        if name == "bracket":
            return bracket_headline(data)
        if name == "train step":
            parts = []
            for case in data["cases"]:
                rates = "/".join(f"{m['images_per_s']:,.0f}" for m in case["methods"].values())
                parts.append(f"{case['resolution']}px {rates} img/s")
            syncs = ", ".join(f"{s['method']}: {s['host_syncs']}" for s in data["sync_check"])
            return "SGD/CrAM+/N:M " + "; ".join(parts) + f"; host syncs {syncs}"
        if name == "decode":
            if "loader_images_per_s" in data:  # the earlier benchmark's result
                rate = data["loader_images_per_s"]
                return (f"GPU {rate['gpu']['median']:,.0f} vs CPU {rate['cpu']['median']:,.0f} "
                        f"img/s; training at {100 * data['train_gpu_of_ceiling']:.0f}% of the ceiling")
            fed = data["fed_by"]
            alone = data["loader_alone"][fed]
            train = "; ".join(f"{label} {100 * data['training'][m]['fed_of_ceiling']:.1f}%"
                              for m, label in (("sgd", "SGD"), ("cram", "CrAM+"))
                              if data["training"].get(m, {}).get("fed_of_ceiling") is not None)
            return (f"{fed} ({data['decoders'][fed]}): {alone['images_per_s']:,.0f} img/s, "
                    f"{alone['syncs_per_batch']} syncs/batch; of the ceiling: {train}")
        if name in [s.name for s in compile_sections()]:
            return compile_headline(data["cases"][-1])
        if name == "end to end":
            rates = [e["images_per_s"] for e in data["epochs"]]
            best = f"{sorted(rates)[len(rates) // 2]:,.0f} img/s median epoch" if rates else ""
            return f"{data['status']}, {len(rates)} epochs, {best}"
    except (KeyError, TypeError, IndexError, ZeroDivisionError) as err:
        return f"(no summary: {type(err).__name__} {err})"
    return ""


def compile_headline(case: dict) -> str:
    """bench_compile.py's case: images/s of each variant (eager first), CrAM+ / SGD, peak memory,
    compile cost, recompiles. A result saved before images/s were: its speedups."""
    methods = case["methods"]
    cram = methods["cram+ global"]
    if "eager_images_per_s" not in cram:
        speedups = ", ".join(f"{label} {m['modes']['default']['speedup']:.2f}x"
                             for label, m in methods.items())
        return (f"{case['resolution']}px compiled / eager speedup: {speedups}; CrAM+ compile "
                f"{cram['modes']['default']['compile_s']:.0f} s; recompiles while timed "
                f"{case['recompiles_while_timed']}")
    modes = list(cram["modes"])
    names = "/".join(["eager", *("graphs" if m == "reduce-overhead" else m for m in modes)])

    def per_variant(m, key, eager_key, fmt):
        values = [m.get(eager_key)] + [m["modes"][mode].get(key) for mode in modes]
        return "/".join("-" if v is None else fmt(v) for v in values)

    rates = "; ".join(f"{'SGD' if label == 'sgd' else 'CrAM+'} "
                      + per_variant(m, "images_per_s", "eager_images_per_s", lambda v: f"{v:,.0f}")
                      for label, m in sorted(methods.items(), key=lambda item: item[0] != "sgd"))
    ratio = "/".join(f"{case['cram_over_sgd'][v]:.2f}" for v in ("eager", *modes))
    parts = [f"{case['resolution']}px b{case['batch']} img/s ({names}): {rates}",
             f"CrAM+/SGD {ratio}"]
    if "eager_peak_memory_bytes" in cram:
        parts.append("peak GiB SGD " + per_variant(methods["sgd"], "peak_memory_bytes",
                                                   "eager_peak_memory_bytes",
                                                   lambda v: f"{v / 2**30:.1f}"))
    costs = [f"{mode} {cram['modes'][mode]['compile_s']:.0f} s" for mode in modes]
    if costs:
        parts.append("CrAM+ compile " + ", ".join(costs))
    if case.get("modes_skipped_for_time"):
        parts.append("skipped for time: " + ", ".join(case["modes_skipped_for_time"]))
    parts.append(f"recompiles while timed {case['recompiles_while_timed']}")
    return "; ".join(parts)


def kernels_headline(data: dict, m: dict) -> str:
    """bench_topk_kernel.py's numbers at s=0.9; the parts of sections that failed are left out."""
    parts = [f"s=0.9: bracket {m['bracket_s'] * 1e3:.3f} ms = "
             f"{m['bracket_s'] / data['floor_s']:.1f}x floor, "
             f"{m['reference_s'] / m['bracket_s']:.0f}x faster than the reference "
             f"(radix {m['radix_s'] * 1e3:.2f} ms)"]
    where = data.get("where_time_goes") or {}
    if "fused" in where:
        parts.append(f"{where['bracket_call']['host_s'] * 1e6:.0f} us host/mask, "
                     f"{where['fused']['launches']:g} kernels/optimizer side")
    step = data.get("step") or {}
    shares = [f"{label} {100 * step[k]['optimizer_side_s'] / step[k]['step_s']:.1f}%"
              for k, label in (("fused", "eager"), ("fused + graph", "graph")) if k in step]
    if shares:
        parts.append("optimizer side " + ", ".join(shares) + " of the step")
    health = data.get("bracket_health") or []
    if health:
        parts.append(f"misses {sum(h['misses'] for h in health)}/"
                     f"{sum(h['calls'] for h in health)}")
    ratio = (data.get("step_ratio") or {}).get("methods", {})
    if "cram" in ratio:
        parts.append("CrAM+/SGD " + "/".join(f"{ratio[k]['ratio']:.2f}"
                                             for k in ("cram", "cram + graph") if k in ratio))
    if data.get("errors"):
        parts.append("failed: " + ", ".join(data["errors"]))
    if data.get("skipped"):
        parts.append("skipped for time: " + ", ".join(data["skipped"]))
    return "; ".join(parts)


def bracket_headline(data: dict) -> str:
    """bench_bracket_cliffs.py: the default mask's time, the worst cliff against radix, misses."""
    m = {row["sparsity"]: row for row in data["masks"]}[0.9]
    worst = max(data["cliffs"], key=lambda r: r["over_radix"])
    forced = next(r for r in data["cliffs"] if r["pattern"] == "forced miss")
    return (f"s=0.9 mask {m['bracket_s'] * 1e3:.3f} ms (radix {m['radix_s'] * 1e3:.3f}); "
            f"forced miss {forced['over_radix']:.2f}x radix; worst pattern {worst['pattern']} "
            f"{worst['over_radix']:.2f}x ({worst['over_gaussian_radix']:.2f}x Gaussian radix); "
            f"misses {data['misses']}/{data['halves']} real halves")


def gpu_slug() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
        name = out.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "nogpu"
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("nvidia", "")).strip("_") or "gpu"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=630,
                        help="the whole check stops starting sections after this long")
    parser.add_argument("--e2e-seconds", type=float, default=100,
                        help="how long train_imagenet.py runs in section 6")
    parser.add_argument("--only", nargs="+", default=None, metavar="SECTION",
                        help="run only these sections (names as in the table, e.g. 'kernels')")
    parser.add_argument("--ffcv-bundle", default=str(BUNDLE),
                        help="bench/pack_ffcv.sh bundle, installed when ffcv is not importable")
    parser.add_argument("--dry-run", action="store_true",
                        help="every section's script on the CPU, tiny inputs, nothing timed")
    args = parser.parse_args()
    names = [s.name for s in sections("", "", 0)]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        print(f"error: --only {', '.join(unknown)}: no such section; choose from "
              + ", ".join(names), file=sys.stderr)
        return 2

    log = Log()
    start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="gpu_check_")
    try:
        return check(args, log, work, start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(args, log: Log, work: str, start: float) -> int:
    scratch = os.path.join(work, "results")
    data_dir = os.path.join(work, "data")
    # progress bars would fill the log with carriage-return frames
    env = {**os.environ, "BENCH_RESULTS_DIR": scratch, "WANDB_MODE": "disabled",
           "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    env = prepend(env, {"PYTHONPATH": str(REPOSITORY)})
    ffcv = ffcv_problem(env)
    if ffcv and Path(args.ffcv_bundle).exists():
        try:
            env = prepend(env, install_ffcv_bundle(Path(args.ffcv_bundle), work, log))
            ffcv = ffcv_problem(env)
        except (OSError, subprocess.CalledProcessError, tarfile.TarError) as err:
            ffcv = f"the bundle {args.ffcv_bundle} could not be installed: {err}"
    if ffcv:
        log(f"ffcv cannot be imported ({ffcv}): sections 5-6 are skipped. Carry it with "
            "bench/pack_ffcv.sh (see bench/carry_ffcv.md)")

    chosen = [s for s in sections(data_dir, work, args.e2e_seconds)
              if not args.only or s.name in args.only]
    summary = {}
    for section in chosen:
        left = args.budget_s - (time.perf_counter() - start)
        if section.needs_ffcv and ffcv:
            summary[section.name] = {"status": "skipped: ffcv cannot be imported", "error": ffcv}
            continue
        if left < 10 and not args.dry_run:
            summary[section.name] = {"status": "skipped: the time budget is spent"}
            continue
        limit = section.limit_s if args.dry_run else min(section.limit_s, left)
        result = run_section(section, args.dry_run, env, max(limit, 10), log)
        data = {}
        for name in section.results:
            path = Path(scratch) / f"{name}.json"
            if path.exists():
                data.update(json.loads(path.read_text()))
        result["data"] = data
        if section.name == "cuda tests" and not args.dry_run:
            result["tests"] = junit_counts(os.path.join(work, "cuda_tests.xml"))
        summary[section.name] = result

    return report(summary, args, log, scratch, time.perf_counter() - start)


def report(summary: dict, args, log: Log, scratch: str, seconds: float) -> int:
    # common imports ffcv_cram: this process finds it only through the repository root (its own
    # sys.path starts at bench/, and PYTHONPATH may name other folders)
    for folder in (str(REPOSITORY), str(BENCH)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    from common import RESULTS, environment, table
    rows = [[name, r["status"], f"{r.get('seconds', 0):.0f}",
             r.get("error", "") if r["status"] != "ok" else "" if args.dry_run else headline(name, r)]
            for name, r in summary.items()]
    failed = [name for name, r in summary.items() if r["status"] != "ok"]
    log(f"\n=== gpu check: {len(summary) - len(failed)}/{len(summary)} sections ok in "
        f"{seconds:.0f} s" + (" (dry run: nothing timed, nothing saved)" if args.dry_run else ""))
    log(table(rows, ["section", "status", "s", "result"]))
    if args.dry_run:
        return 1 if failed else 0
    slug = gpu_slug()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for path in Path(scratch).glob("*.json"):  # each section's own result, beside the summary
        shutil.copy(path, RESULTS / path.name)
    for path in Path(scratch).glob("*.log"):
        shutil.copy(path, RESULTS / path.name)
    payload = {"benchmark": "gpu_check", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "environment": environment(), "seconds": seconds, "sections": summary}
    json_path = RESULTS / f"gpu_check_{slug}.json"
    write_atomic(json_path, json.dumps(payload, indent=2) + "\n")
    log(f"saved {json_path.relative_to(REPOSITORY)} and its .log")
    write_atomic(json_path.with_suffix(".log"), "\n".join(log.lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
