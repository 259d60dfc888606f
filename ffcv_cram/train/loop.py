"""The training loop shared by train_cifar.py and train_imagenet.py.

`run(cfg, style)` takes the parsed configuration ({section: {key: value}}) and trains: per-epoch
resolution, per-iteration learning rate, one `TrainStep` per batch, evaluation every N epochs,
one log line and one atomic checkpoint per epoch (and, with `checkpoint.every_steps`, every N steps
within it), and at the end `final_weights.pt`. Re-running the same command resumes from the run
folder's last checkpoint, mid-epoch too, and continues bit-identically.
"""
from __future__ import annotations

import math
import os
import pickle
import sys
import time
from collections import Counter

import torch
from torch.nn.parallel import DistributedDataParallel

from ..atomic import remove_stale_temporaries, torch_save
from ..config import UsageError, num_classes as config_num_classes
from ..data.loader_options import LoaderError, LoaderOptions
from ..data.pipelines import ImageLoader
from ..data.resident import ResidentLoader
from ..data.threads import loader_threads, local_processes, thread_summary, usable_cores
from ..models import get_model
from ..models.compiled import compile_model, compile_problem, replays_graphs
from ..runtime.dist import Context, all_gather_str, all_sum, broadcast_buffers, setup, teardown
from ..runtime.evaluate import evaluate
from ..safe_load import UnsafeFile
from ..sparsity.masks import prunable_weights
from ..sparsity.prune import uniform_targets
from . import checkpoint as ckpt
from . import extend
from .best import BestCheckpoint
from .compile_clock import CompileClock
from .epoch_so_far import EpochSoFar
from .epoch_totals import EpochTotals
from .global_batch import describe, plan_from_config, saved_plan
from .init_weights import start_from
from .logger import RunLogger
from .optimizer_options import OptimizerOptions
from .schedule import lr_at, resolution_at
from .step_log import StepLog
from .step import TrainStep, make_optimizer, parameter_groups

# sections that may change between a run and its resumption without changing its result
RESUMABLE_CHANGES = ("logging", "checkpoint", "validation")
RESUMABLE_KEYS = ("data.num_workers", "data.in_memory", "data.decode", "data.jpeg_decoder",
                  "data.gpu_prefetch", "data.resident_limit_mb", "training.device",
                  "training.dist_timeout", "training.compile", "training.compile_mode")
# keys added after runs were saved without them: the value a saved run had (the default, except
# for CIFAR inputs, which followed CIFAR-10's true std before the reference's became the default)
ADDED_KEYS = {"cram.interval": 1, "cram.reuse": False, "cram.second_pass_fraction": 1.0,
              "training.cuda_graph": False, "data.cifar_inputs": "cifar10_std",
              "cram.start_epoch": 0.0, "cram.ramp": False, "data.resident": False,
              "training.init_weights": "", "training.trust_init_weights": False}
# compared through what they amount to, the batch plan's global batch and effective lr (a run
# saved before the global batch existed holds training.batch_size per process instead)
PLANNED_KEYS = ("training.batch_size", "training.global_batch_size",
                "training.max_batch_per_process", "lr.lr", "lr.batch_size", "lr.scaling",
                "batch_plan.world_size", "batch_plan.batch_size_per_process")


def _flat(cfg: dict) -> dict:
    return {f"{s}.{k}": v for s, keys in cfg.items() for k, v in keys.items()}


def config_differences(saved: dict, current: dict, world_size: int = 1) -> list[str]:
    """Settings in which the `current` configuration (with its batch plan) differs from a `saved`
    one, resumed by `world_size` processes."""
    b = _flat(current)
    plan = saved_plan(saved, world_size)
    if plan is not None:
        saved = {**saved, "batch_plan": plan}
    a = {**{k: v for k, v in ADDED_KEYS.items() if k in b}, **_flat(saved)}
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                  and k.split(".")[0] not in RESUMABLE_CHANGES and k not in RESUMABLE_KEYS
                  and k not in PLANNED_KEYS)


def _resolutions(cfg: dict, style: str, epoch: int) -> int:
    r = cfg["resolution"]
    if style == "cifar":
        return 0
    return resolution_at(epoch, r["min_res"], r["max_res"], r["start_ramp"], r["end_ramp"])


def _lr(cfg: dict, epoch: float) -> float:
    lr, t = cfg["lr"], cfg["training"]
    return lr_at(epoch, schedule=lr["schedule"], lr=cfg["batch_plan"]["lr"], epochs=t["epochs"],
                 warmup_epochs=lr["warmup_epochs"], end_epoch=lr["end_epoch"] or None,
                 milestones=lr["step_milestones"], gamma=lr["step_gamma"],
                 peak_epoch=lr["peak_epoch"], per_iteration=lr["per_iteration"])


AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _resident_loaders(cfg: dict, ctx: Context):
    """Both datasets decoded once into the training device's memory, batches in the AMP dtype."""
    d, t = cfg["data"], cfg["training"]
    limit = int(d["resident_limit_mb"] * 2**20) or None
    common = dict(device=ctx.device, dtype=AMP_DTYPES[t["amp"]], rank=ctx.rank,
                  world_size=ctx.world_size, channels_last=t["channels_last"],
                  num_workers=d["num_workers"], memory_limit=limit, cifar_inputs=d["cifar_inputs"])
    train = ResidentLoader(d["train_dataset"], train=True,
                           batch_size=cfg["batch_plan"]["batch_size_per_process"],
                           seed=t["seed"], **common)
    val = (ResidentLoader(d["val_dataset"], train=False,
                          batch_size=cfg["validation"]["batch_size"], **common)
           if d["val_dataset"] else None)
    if ctx.is_main:
        print(f"resident data on {ctx.device}: {len(train.labels):,} training images"
              + (f", {len(val.labels):,} validation images" if val else ""), flush=True)
    return train, val


def _loaders(cfg: dict, style: str, ctx: Context, start_epoch: int):
    d = cfg["data"]
    try:
        train, val = (_resident_loaders(cfg, ctx) if d.get("resident")
                      else _ffcv_loaders(cfg, style, ctx, start_epoch))
    except LoaderError as err:
        raise UsageError(str(err)) from None
    if len(train) == 0:
        raise UsageError(f"{d['train_dataset']}: fewer samples per process than one batch of "
                         f"{cfg['batch_plan']['batch_size_per_process']}; lower "
                         "--training.global_batch_size (with --lr.scaling)")
    return train, val


def _ffcv_loaders(cfg: dict, style: str, ctx: Context, start_epoch: int):
    d, t, v = cfg["data"], cfg["training"], cfg["validation"]
    # the training and validation loaders take turns (an epoch ends before evaluation starts),
    # so each may use the process's whole share of the cores
    options = LoaderOptions.from_data_section(
        d, style=style, num_workers=loader_threads(d["num_workers"]), device=ctx.device,
        distributed=ctx.distributed, rank=ctx.rank, world_size=ctx.world_size,
        channels_last=t["channels_last"])
    train = ImageLoader(d["train_dataset"], train=True,
                        batch_size=cfg["batch_plan"]["batch_size_per_process"],
                        resolution=_resolutions(cfg, style, start_epoch) or 224,
                        seed=t["seed"], order=d["order"], options=options)
    val = None
    if d["val_dataset"]:
        res = cfg["resolution"]["val_res"] if style == "imagenet" else 224
        val = ImageLoader(d["val_dataset"], train=False, batch_size=v["batch_size"],
                          resolution=res, options=options)
    if ctx.is_main:
        print(thread_summary(d["num_workers"]), flush=True)
    return train, val


def cram_schedule_steps(cram: dict, epochs: int, iters: int) -> tuple[int, int]:
    """(start_step, ramp_steps) of the optimizer from --cram.start_epoch and --cram.ramp: CrAM
    starts at step floor(start_epoch * iters); the ramp runs from there to the last step."""
    start_step = math.floor(cram["start_epoch"] * iters)
    return start_step, (epochs * iters - start_step) if cram["ramp"] else 0


def _build(cfg: dict, ctx: Context, num_classes: int, iters: int):
    m, t, c = cfg["model"], cfg["training"], cfg["cram"]
    start_step, ramp_steps = (cram_schedule_steps(c, t["epochs"], iters)
                              if t["optimizer"] in ("cram", "cram_nm") else (0, 0))
    model = get_model(m["arch"], num_classes, blurpool=m["blurpool"]).to(ctx.device)
    if t["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    groups = parameter_groups(model, t["weight_decay"], t["decay_bn_and_bias"])
    options = OptimizerOptions.from_config(cfg, start_step, ramp_steps)
    optimizer = make_optimizer(groups, options, dense=_uniform_dense(model, c["scope"]))
    return model, optimizer


def _uniform_dense(model, scope: str):
    """scope uniform leaves the first conv and the last Linear dense, chosen by module type as
    one-shot uniform pruning does (and as the reference's unif_prune by position)."""
    if scope != "uniform":
        return None
    pruned = {id(p) for _, p in uniform_targets(model)}
    return [p for _, _, p in prunable_weights(model) if id(p) not in pruned]


def _compiled(cfg: dict, style: str, model, ctx: Context):
    """The compiled model, and the clock that reports its compile cost. One graph per training
    resolution, two for the two-pass methods (their second pass freezes BatchNorm statistics)."""
    t = cfg["training"]
    problem = compile_problem(ctx.device, t["compile_mode"])
    if problem:
        raise UsageError(f"--training.compile: {problem}")
    resolutions = {_resolutions(cfg, style, epoch) for epoch in range(t["epochs"])}
    graphs = len(resolutions) * (1 if t["optimizer"] == "sgd" else 2)
    workers = max(1, usable_cores() // local_processes())  # this process's share of the cores
    return (compile_model(model, t["compile_mode"], graphs, workers),
            CompileClock(ctx.device, t["compile_mode"], announce=ctx.is_main))


def _draw(optimizer):
    if getattr(optimizer, "last_sparsity", None) is not None:
        return f"{optimizer.last_sparsity:g}"
    if getattr(optimizer, "last_pattern", None) is not None:
        return "{}:{}".format(*optimizer.last_pattern)
    return None


def _decode_counts(loader) -> list[float]:
    return [float(loader.decode_fallbacks), float(loader.decode_failures)]


def _decode_record(before: list[float], loader, ctx: Context, prefix: str = "") -> dict:
    """This epoch's corrupt samples over all ranks: CPU-decoded fallbacks, blank replacements."""
    fallbacks, failures = all_sum([a - b for a, b in zip(_decode_counts(loader), before)], ctx)
    return {f"{prefix}decode_fallbacks": int(fallbacks), f"{prefix}decode_failures": int(failures)}


def _train_epoch(cfg, epoch, step, loader, logger, ctx, resolution, so_far: EpochSoFar,
                 save_mid_epoch, step_log: StepLog, clock: CompileClock | None = None):
    """One epoch, from its batch `so_far.batch` on (the loader set to skip the batches before).
    Nothing per step waits for the device (see `epoch_totals`): the totals are read once at the
    end and at each mid-epoch checkpoint, and the progress bar shows the loss of an already
    finished step. `save_mid_epoch(epoch, so_far)` is called every `checkpoint.every_steps` batches."""
    iters, every = len(loader), cfg["checkpoint"]["every_steps"]
    decode_before = _decode_counts(loader)
    totals = EpochTotals(ctx.device)
    draws, skipped, lr = Counter(so_far.draws), 0, 0.0
    bar = logger.bar(iters, f"epoch {epoch}", initial=so_far.batch)
    start = time.perf_counter()
    step_log.start()

    def until_now(batch: int) -> EpochSoFar:  # a collective: every rank calls it at the same batch
        step_log.flush()
        sums = all_sum([*totals.result(), float(skipped), *(
            a - b for a, b in zip(_decode_counts(loader), decode_before))], ctx)
        return so_far.extended(batch, sums, draws, time.perf_counter() - start)

    for i, (x, y) in enumerate(loader, so_far.batch):  # i: the batch's number in the whole epoch
        lr = _lr(cfg, epoch + i / iters)
        for group in step.optimizer.param_groups:
            group["lr"] = lr
        out = step(x, y) if clock is None else clock.step(step, x, y)
        totals.add(out.loss, out.correct, len(y))
        skipped += out.skipped
        compressed = getattr(step.optimizer, "last_step_compressed", True)  # not a one-pass step
        name = _draw(step.optimizer) if not out.skipped and compressed else None
        if name is not None:
            draws[name] += 1
        step_log.add(epoch, i, out.loss, len(y), lr, name)
        bar.update(1)
        if logger.is_main and (i % 20 == 0 or i == iters - 1):
            totals.loss.post(out.loss)
            loss = totals.loss.read()
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss="..." if loss is None else f"{loss:.3f}", lr=f"{lr:.4g}",
                            img_s=f"{totals.samples * ctx.world_size / elapsed:.0f}",
                            res=resolution or x.shape[-1])
        if every and (i + 1) % every == 0 and i + 1 < iters:  # the epoch's end saves anyway
            # waits for the device once per checkpoint: the totals go into it as numbers
            save_mid_epoch(epoch, until_now(i + 1))
    bar.close()
    return until_now(iters).record(lr)


def _resume_state(cfg: dict, folder: str, world_size: int):
    path = os.path.join(folder, ckpt.LAST)
    if not os.path.exists(path):
        return None
    if not cfg["checkpoint"]["resume"]:
        raise UsageError(f"{folder} already holds a run ({ckpt.LAST}); re-run with "
                         "--checkpoint.resume=1 to continue it, or choose another --logging.folder")
    try:
        state = ckpt.load_checkpoint(path, trusted=cfg["checkpoint"]["trust"])
    except UnsafeFile as err:
        raise UsageError(err.explain("--checkpoint.trust=1")) from None
    except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise UsageError(f"{path}: cannot be read ({err}); delete it to start over") from None
    differences = extend.remaining_differences(
        state["config"], cfg, config_differences(state["config"], cfg, world_size), folder)
    if differences:
        raise UsageError(f"{folder} holds a run with a different configuration ({', '.join(differences)}); "
                         "use another --logging.folder or the same settings")
    return state


def run(cfg: dict, style: str) -> dict:
    """Train according to `cfg`; returns the final record. Raises UsageError for user mistakes."""
    t = cfg["training"]
    try:
        ctx = setup(t["device"], t["dist_timeout"])
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        cfg = {**cfg, "batch_plan": plan_from_config(cfg, ctx.world_size).to_dict()}
        return _run(cfg, style, ctx)
    finally:
        teardown()


def _run(cfg: dict, style: str, ctx: Context) -> dict:
    t, folder = cfg["training"], cfg["logging"]["folder"]
    torch.manual_seed(t["seed"])
    if t["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    num_classes = config_num_classes(cfg["model"]["num_classes"], cfg["data"]["train_dataset"])
    state = _resume_state(cfg, folder, ctx.world_size)
    if ctx.is_main:  # a run killed while writing a checkpoint left its temporary file
        remove_stale_temporaries(folder)
    start_epoch = state["epoch"] if state else 0
    resumed = _resume_point(state, ctx, os.path.join(folder, ckpt.LAST))
    cfg, extension = extend.with_history(cfg, state and state["config"], start_epoch, resumed.batch)
    # the loaders first: CrAM's step schedule is set in steps, from the epoch's length
    train_loader, val_loader = _loaders(cfg, style, ctx, start_epoch)
    iters = len(train_loader)
    torch.manual_seed(t["seed"])  # the initialisation does not depend on what loading drew
    model, optimizer = _build(cfg, ctx, num_classes, iters)
    step = TrainStep(model, optimizer, t["optimizer"], t["amp"], t["label_smoothing"], ctx.device)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if step.scaler is not None and state["scaler"] is not None:
            step.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
    elif t["init_weights"]:
        start_from(model, t["init_weights"], cfg["model"], t["trust_init_weights"])
        if ctx.is_main:
            print(f"starting from the weights in {t['init_weights']}", flush=True)
    clock = None
    if t["compile"]:  # compiled inside DDP, the order the PyTorch docs advise; `model` stays plain
        step.model, clock = _compiled(cfg, style, model, ctx)
        step.replays_cuda_graphs = replays_graphs(t["compile_mode"])
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        step.model = DistributedDataParallel(step.model, device_ids=device_ids)
    if resumed.batch >= iters:
        raise UsageError(f"{os.path.join(folder, ckpt.LAST)}: written at batch {resumed.batch} of "
                         f"an epoch, but an epoch of this training set has {iters} batches; resume "
                         "with the same dataset")
    if state and ctx.is_main and start_epoch < t["epochs"]:
        print(f"resuming from {ckpt.LAST}: epoch {start_epoch}, batch {resumed.batch} of {iters}",
              flush=True)
        if extension:
            print(extend.announcement(extension, _lr(cfg, start_epoch + resumed.batch / iters)),
                  flush=True)
    if ctx.is_main:
        print(describe(cfg["batch_plan"], cfg), flush=True)
    logger = RunLogger(folder, cfg, ctx.is_main, cfg["logging"]["wandb_project"] or None,
                       cfg["logging"]["wandb_mode"], cfg["logging"]["wandb_name"] or None)
    logger.keep_epochs_before(start_epoch)
    step_log = StepLog(folder, cfg["logging"]["steps"], ctx)
    step_log.keep_before(start_epoch, resumed.batch)
    amp_dtype = step.amp_dtype
    epochs, every = t["epochs"], cfg["validation"]["every"]
    record: dict = {}
    run_state = dict(model=model, optimizer=optimizer, scaler=step.scaler, config=cfg)
    best = BestCheckpoint(folder, cfg["checkpoint"]["keep_best"], state and state.get("best"))

    def save_mid_epoch(epoch: int, so_far: EpochSoFar):
        if ctx.is_main:
            ckpt.save_checkpoint(os.path.join(folder, ckpt.LAST), **run_state, epoch=epoch,
                                 step=epoch * iters + so_far.batch, draws=so_far.draws,
                                 epoch_so_far=so_far.to_dict(), best=best.record)

    for epoch in range(start_epoch, epochs):
        so_far = resumed if epoch == start_epoch else EpochSoFar(world_size=ctx.world_size)
        resolution = _resolutions(cfg, style, epoch)
        if resolution:
            train_loader.set_resolution(resolution)
        train_loader.set_epoch(epoch, so_far.batch)
        step.model.train()
        record = {"epoch": epoch, "resolution": resolution or None, **_plan_record(cfg),
                  **_train_epoch(cfg, epoch, step, train_loader, logger, ctx, resolution, so_far,
                                 save_mid_epoch, step_log, clock)}
        if clock is not None:
            record.update(clock.report())
        last = epoch == epochs - 1
        if val_loader is not None and (last or (every and (epoch + 1) % every == 0)):
            decode_before = _decode_counts(val_loader)
            # the unwrapped model (a DDP forward is a collective, and validation shards may differ
            # by a batch), with rank 0's BatchNorm statistics: the model that rank 0 saves
            broadcast_buffers(model, ctx)
            metrics = evaluate(model, val_loader, ctx, amp_dtype,
                               cfg["validation"]["flip_tta"], progress=True)
            record.update({f"val_{k}": v for k, v in metrics.items() if k != "samples"})
            record.update(_decode_record(decode_before, val_loader, ctx, "val_"))
        if last:  # DDP keeps the replicas identical; the log shows it, rank by rank
            record["params_sha256"] = all_gather_str(ckpt.parameters_sha256(model), ctx)
        logger.log_epoch(record)
        if ctx.is_main:
            improved = best.improved(record)  # best.pt first: checkpoint_last.pt then names it
            kwargs = dict(**run_state, epoch=epoch + 1, step=(epoch + 1) * iters,
                          draws=record["sparsity_draws"], best=best.record)
            if improved:
                ckpt.save_checkpoint(best.path, **kwargs)
            ckpt.save_checkpoint(os.path.join(folder, ckpt.LAST), **kwargs)
            keep = cfg["checkpoint"]["every"]
            if keep and (epoch + 1) % keep == 0:
                ckpt.save_checkpoint(os.path.join(folder, f"checkpoint_epoch{epoch + 1}.pt"), **kwargs)
        _print_epoch(record, ctx)
    if ctx.is_main:
        torch_save(ckpt.plain_state_dict(model), os.path.join(folder, ckpt.FINAL_WEIGHTS))
        logger.summary(record)
    logger.finish()
    return record


def _plan_record(cfg: dict) -> dict:
    plan = cfg["batch_plan"]
    return {"world_size": plan["world_size"], "batch_size_per_process": plan["batch_size_per_process"],
            "global_batch_size": plan["global_batch_size"], "peak_lr": plan["lr"]}


def _resume_point(state: dict | None, ctx: Context, path: str) -> EpochSoFar:
    """Where in its epoch the run continues. A mid-epoch checkpoint continues only with the
    number of processes it was written with: the epoch's shards depend on it."""
    resumed = EpochSoFar.from_dict(state.get("epoch_so_far") if state else None, ctx.world_size)
    if resumed.batch and resumed.world_size != ctx.world_size:
        raise UsageError(f"{path}: written in the middle of an epoch trained by {resumed.world_size} "
                         f"processes, resumed by {ctx.world_size}; resume it with "
                         f"{resumed.world_size} processes")
    return resumed


def _print_epoch(record: dict, ctx: Context) -> None:
    if not ctx.is_main:
        return
    parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}",
             f"train top-1 {record['train_top1']:.2f}%", f"lr {record['lr']:.4g}",
             f"{record['images_per_s']:.0f} img/s"]
    if "val_top1" in record:
        parts += [f"val top-1 {record['val_top1']:.2f}%", f"top-5 {record['val_top5']:.2f}%"]
    if len(set(record.get("params_sha256", ()))) > 1:
        print("warning: the processes ended with different parameters (params_sha256 in "
              "log.jsonl); final_weights.pt holds rank 0's", file=sys.stderr, flush=True)
    if record["skipped_steps"]:
        parts.append(f"{record['skipped_steps']} fp16 steps skipped")
    for prefix, split in (("", "train"), ("val_", "val")):
        fallbacks, failures = (record.get(f"{prefix}decode_{k}", 0) for k in ("fallbacks", "failures"))
        if fallbacks or failures:
            parts.append(f"{split}: {fallbacks} corrupt JPEGs decoded on the CPU, "
                         f"{failures} unreadable (blank images)")
    print(" | ".join(parts), flush=True)
