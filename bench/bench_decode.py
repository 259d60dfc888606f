"""decode='gpu' loaders feeding ResNet-50: how close to GPU-resident data, and what each part buys.

Data: generated photographs (bench/natural_images.py, about 500 x 375, JPEG quality 90) written
with our writer; batches of 256 RandomResizedCrop(176) + flip, normalised, bf16, channels_last.
Loader variants (the same crops and flips in each):
  reference  the earlier path: torchvision's decode_jpeg (whole images), padded fp32 matmul crops
             (`gpu_augment`), one batch ahead, the producer synchronising its stream per batch
  quick      quick fixes only, on torchvision: torchvision's decode_jpeg (whole images), but the
             Triton crop kernel fed by one pinned table, events instead of host waits,
             --prefetch batches ahead
  full       nvImageCodec in the configuration the decoder microbenchmark (2.) found fastest
             (backend list, region or whole decode; shipped defaults if none ran cleanly), the
             kernel, events, --prefetch batches ahead (skipped, with the reason, where
             nvImageCodec cannot run)
Measured, each pass on a persistent iterator (one producer thread across epochs):
1. decoders alone, batch --batch-size, one warm-up batch then --decode-batches - 1 timed:
   nvImageCodec per backend list (the shipped [HW_GPU_ONLY, GPU_ONLY, HYBRID_CPU_GPU], each kind
   alone, the hardware engine with a 0.75 load hint before HYBRID_CPU_GPU) x (whole images, crop
   regions), the shipped list with other max_num_cpu_threads, torchvision's batched decode:
   images/s, host ms per call, images refused (None), pixels vs the first whole-image case;
2. correctness: quick and full on CUDA against the same path on CPU tensors (libjpeg-turbo);
3. loader alone per variant: images/s, host ms per batch, the loader stream's busy ms per batch
   (CUDA events around the producer's work: includes its waits on the JPEG engine and on
   nvImageCodec's own streams, so it is not GPU compute), host syncs per batch under
   torch.cuda.set_sync_debug_mode("warn"), CPU fallbacks per batch;
4. training: ResNet-50 SGD and CrAM+ (global, plus, sparse gradient): per round one pass on one
   GPU-resident batch (the ceiling) and one fed by each of quick and full (order reversed every
   other round); per step the training thread's wait for its next batch (p50/p99);
5. the loaders' SM time (last, so the profiler cannot slow the timed passes): torch.profiler's
   CUDA activity over --profile-batches batches of each feeding loader's per-batch work alone
   (this thread, a side stream): the kernels' summed device time per batch (decoders, crop
   kernel, small copies) vs an SGD step; the hardware JPEG engine runs no kernels.
Targets (one H200, 16 cores), for the best-loading variant: fed >= 95 % of the ceiling for SGD and
>= 97 % for CrAM+; the loader alone >= 15,000 img/s; <= 1 host sync per batch; loader SM time
<= 5 % of an SGD step. --deadline-s: training rounds that would end after it are skipped
(recorded), the time left shared between the methods, and the profile kept after it, so that the
run fits the gpu-check section's limit. --dry-run runs every part on CPU tensors at toy sizes.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from ffcv_cram.data import jpeg_decoders

from common import RESULTS  # noqa: F401  (tests patch bench_decode.RESULTS)
from decode_decoders import _one_line, choose_full, decoder_alone, versions
from decode_decoders import pixel_diff  # noqa: F401  (tests call bench_decode.pixel_diff)
from decode_loaders import (build, check_against_cpu, loader_alone, loader_kernels, training,
                            variants, write_dataset)
from decode_report import _decoder_line, _ms, _pct, elapsed, report, say

PROFILE_RESERVE_S = 8  # kept after training for the loaders' profile (about 3 s per loader)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10240, help="generated images in the .beton")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=176)
    parser.add_argument("--prefetch", type=int, default=2, help="--data.gpu_prefetch of quick/full")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved training rounds")
    parser.add_argument("--train-steps", type=int, default=200, help="timed SGD steps per pass")
    parser.add_argument("--cram-steps", type=int, default=None,
                        help="timed CrAM+ steps per pass (default: half --train-steps: a CrAM+ "
                             "step costs about two SGD steps)")
    parser.add_argument("--loader-steps", type=int, default=200, help="timed batches, loader alone")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    parser.add_argument("--sync-steps", type=int, default=20, help="batches counted for syncs")
    parser.add_argument("--decode-batches", type=int, default=4,
                        help="batches per decoder case: one warm-up, the others timed")
    parser.add_argument("--decoder-seconds", type=float, default=18,
                        help="decoder cases that would start later than this are skipped")
    parser.add_argument("--check-images", type=int, default=32,
                        help="images per decoder case compared with the first case's")
    parser.add_argument("--profile-batches", type=int, default=8,
                        help="batches per loader under torch.profiler (SM time)")
    parser.add_argument("--check-batch", type=int, default=64, help="batch of the CPU check")
    parser.add_argument("--methods", nargs="+", default=["sgd", "cram"], choices=["sgd", "cram"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--deadline-s", type=float, default=1e9,
                        help="skip training rounds that would end later than this")
    parser.add_argument("--data-dir", default="", help="keep the .beton here (default: temporary)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: every part on CPU tensors, toy sizes, nothing saved")
    args = parser.parse_args()
    args.model, args.amp, args.dtype = "resnet50", "bf16", torch.bfloat16
    if args.dry_run:
        args.images, args.batch_size, args.resolution = min(args.images, 24), 4, 16
        args.repeats, args.train_steps, args.loader_steps, args.warmup = 1, 2, 2, 1
        args.sync_steps, args.decode_batches, args.check_batch = 2, 2, 4
        args.check_images, args.profile_batches, args.cram_steps = 2, 2, 2
        args.model, args.amp, args.dtype = "resnet18", "none", torch.float32
    elif not torch.cuda.is_available():
        print("error: bench_decode.py measures GPU decoding and no CUDA GPU is visible; "
              "run it on a GPU machine (or with --dry-run to check it on the CPU)", file=sys.stderr)
        return 2
    if args.cram_steps is None:
        args.cram_steps = max(1, args.train_steps // 2)
    if args.data_dir:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        return run(Path(args.data_dir), args)
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as folder:
        return run(Path(folder), args)


def run(folder: Path, args) -> int:
    device = torch.device("cpu" if args.dry_run else "cuda")
    path = write_dataset(folder, args.images, args.workers)
    say(f"dataset: {path} ({os.path.getsize(path) / 2**20:.0f} MiB, {args.images} images) "
        f"at {elapsed():.0f} s")
    ver = versions()
    say("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    auto = jpeg_decoders.choose_decoder("auto", device, args.workers)
    say(f"--data.jpeg_decoder=auto picks: {auto.description}")
    decode_only = decoder_alone(path, args, device)
    for key, r in decode_only["cases"].items():
        say(f"decoder alone, {key}: {_decoder_line(r)}")
    full = choose_full(decode_only, args)
    if device.type == "cuda":
        say(f"full uses nvImageCodec backends {full['backends']}, "
            f"{'regions' if full['regions'] else 'whole images'}: {full['why']} (at {elapsed():.0f} s)")
    loaders, skipped, checks, alone, cpu_run = {}, {}, {}, {}, []
    for name, options in variants(args, device, full).items():
        try:
            loaders[name] = build(path, options, args, device)
        except Exception as err:  # e.g. nvImageCodec missing: recorded, the others still run
            skipped[name] = str(err).splitlines()[0]
            shipped = jpeg_decoders.NVIMGCODEC_BACKENDS
            if name == "full" and options.get("nvimgcodec_backends") not in (None, shipped):
                # e.g. a backend list whose start-up test decode fails: the shipped list instead
                full.update(backends=shipped, regions=True, why=f"the chosen list failed to "
                            f"build ({skipped.pop(name)}): the shipped configuration")
                say(f"full: {full['why']}")
                options = variants(args, device, full)["full"]
                try:
                    loaders[name] = build(path, options, args, device)
                except Exception as again:
                    skipped[name] = str(again).splitlines()[0]
            if name in skipped:
                say(f"{name}: skipped ({skipped[name]})")
                continue
        say(f"{name}: {loaders[name].jpeg_decoder}; kernel "
            f"{loaders[name].device_batches.use_kernel}; prefetch {options['gpu'].prefetch}")
        if name == "reference" and not args.dry_run:  # the earlier path, checked in earlier runs
            continue
        checks[name] = check_against_cpu(path, options, args, device, cpu_run)
        say(f"  vs CPU tensors, same crops: mean |diff| {checks[name]['mean_abs_diff']:.2f}, p99 "
            f"{checks[name]['p99_abs_diff']:.1f} (0-255 scale): {'ok' if checks[name]['ok'] else 'NO'}")
    if not all(c["ok"] for c in checks.values()):
        print("error: a GPU variant's batches differ from the CPU path's beyond decoder tolerance; "
              "not timing a wrong result", file=sys.stderr)
        return 1
    for name, loader in loaders.items():
        alone[name] = loader_alone(loader, args, device)
        a = alone[name]
        say(f"loader alone, {name}: {a['images_per_s']:,.0f} img/s, host "
            f"{a['host_ms_per_batch']['p50']:.1f} ms/batch, stream busy "
            f"{_ms(a['stream_busy_ms_per_batch']['p50'])} ms/batch, syncs/batch "
            f"{a['syncs_per_batch']}, CPU fallbacks/batch {a['cpu_fallbacks_per_batch']:.2f} "
            f"(at {elapsed():.0f} s)")
    feeders = {name: loaders[name] for name in ("quick", "full") if name in loaders}
    fed_by = max(feeders, key=lambda n: alone[n]["images_per_s"]) if feeders else None
    trained = {}
    hard_end = args.deadline_s - PROFILE_RESERVE_S
    for i, method in enumerate(args.methods if feeders else ()):
        share_end = elapsed() + (hard_end - elapsed()) / (len(args.methods) - i)
        trained[method] = t = training(method, feeders, args, device, share_end, hard_end)
        t["fed_by"], t["fed_of_ceiling"] = fed_by, t["of_ceiling"].get(fed_by)
        fed = ", ".join(f"{name} {_pct(t['of_ceiling'][name])} (wait p50/p99 "
                        f"{_ms(t['wait_ms_per_step'][name]['p50'])}/"
                        f"{_ms(t['wait_ms_per_step'][name]['p99'])} ms)" for name in feeders)
        say(f"training {method}, {t['rounds']} round(s) of {t['steps_per_pass']} steps: of the "
            f"ceiling fed by {fed} (at {elapsed():.0f} s)")
    kernels = {}
    for name, loader in feeders.items():
        try:
            kernels[name] = loader_kernels(loader, args, device)
        except Exception as err:  # the profiler is an aid here: its failure is recorded
            kernels[name] = {"error": _one_line(err)}
        k = kernels[name]
        say(f"loader SM time, {name}: " + (k["error"] if "error" in k else
            f"{k['kernel_ms_per_batch']:.2f} ms/batch in {k['kernels_per_batch']:.1f} kernels, "
            f"copies {k['copy_ms_per_batch']:.2f} ms/batch") + f" (at {elapsed():.0f} s)")
    if args.dry_run:
        say("dry run: every part ran on CPU tensors; nothing timed, nothing saved")
        return 0
    return report(args, ver, auto, loaders, skipped, checks, decode_only, alone, trained, fed_by,
                  kernels, full)


if __name__ == "__main__":
    sys.exit(main())
