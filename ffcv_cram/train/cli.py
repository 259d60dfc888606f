"""The command-line face of the trainer: typed fastargs sections, checks, then `loop.run`.

train_cifar.py and train_imagenet.py call `main(style, defaults)`; the only differences between
them are the data style and the defaults.
"""
from __future__ import annotations

from fastargs import Param, Section
from fastargs.validation import OneOf

from ..atomic import AtomicWriteError
from ..choices import AMP_MODES, GRAPH_COMPILE_MODES, LR_SCHEDULES, METHODS, TRAIN_COMPILE_MODES
from .. import config_aliases
from ..config import FloatList, Flag, IntRange, StrList, UsageError, fail, parse
from ..cuda_graph_rules import WHY, cuda_graph_conflict
from ..data.decode_choice import decode_problem
from ..data.loading_params import loading_params
from ..interrupts import treat_sigterm_as_ctrl_c
from .global_batch import LR_SCALINGS, effective_lr
from .input_files import check_input_files


def declare(defaults: dict) -> None:
    """Declare every section; `defaults` maps 'section.key' to the script's default."""
    def d(key, fallback=None):
        return defaults.get(key, fallback)

    Section("data", "datasets and loading").params(
        train_dataset=Param(str, "training .beton", required=True),
        val_dataset=Param(str, "validation .beton ('' to skip evaluation)", default=""),
        **loading_params("training"),
        order=Param(OneOf(["random", "quasi_random"]), "training order", default="random"),
        resident=Param(Flag(), "cifar style: decode the .beton files once into device memory and "
                       "augment batches there (no loader threads; refused if they do not fit)",
                       default=d("data.resident", False)),
        resident_limit_mb=Param(float, "with resident: MiB the decoded data may take (0: 80 % of "
                                "the device's available memory)", default=0.0),
    )
    Section("model", "architecture").params(
        arch=Param(str, "resnet20, resnet18_cifar, vgg16_cifar or any torchvision model",
                   default=d("model.arch")),
        num_classes=Param(IntRange(0), "0: from <train_dataset>.classes.json", default=0),
        blurpool=Param(Flag(), "blur before strided convolutions", default=d("model.blurpool", False)),
    )
    Section("training", "optimisation").params(
        optimizer=Param(OneOf(METHODS), "sgd | sam | cram | cram_nm", default=d("training.optimizer", "cram")),
        epochs=Param(IntRange(1), "epochs", default=d("training.epochs")),
        global_batch_size=Param(IntRange(1), "global batch, over all processes (each process "
                                "trains this / processes samples per step)",
                                default=d("training.global_batch_size")),
        max_batch_per_process=Param(IntRange(0), "refuse a larger per-process batch (no gradient "
                                    "accumulation; 0: no limit)",
                                    default=d("training.max_batch_per_process", 0)),
        momentum=Param(float, "SGD momentum", default=0.9),
        nesterov=Param(Flag(), "Nesterov momentum", default=False),
        weight_decay=Param(float, "weight decay", default=d("training.weight_decay")),
        decay_bn_and_bias=Param(Flag(), "0: no weight decay on tensors of rank <= 1 (BN, biases)",
                                default=True),
        label_smoothing=Param(float, "label smoothing", default=d("training.label_smoothing", 0.0)),
        amp=Param(OneOf(AMP_MODES), "none | bf16 | fp16 (with loss scaling)",
                  default=d("training.amp", "none")),
        channels_last=Param(Flag(), "channels_last model and inputs", default=True),
        device=Param(OneOf(["auto", "cpu", "cuda"]), "auto: cuda when available", default="auto"),
        seed=Param(int, "seed of initialisation, data order and augmentation", default=0),
        deterministic=Param(Flag(), "deterministic kernels (slower on GPUs)", default=False),
        compile=Param(Flag(), "torch.compile the model for both passes (the first step compiles)",
                      default=False),
        compile_mode=Param(OneOf(TRAIN_COMPILE_MODES), "with compile: default | "
                           "max-autotune-no-cudagraphs (autotuned kernels, longer compile) | "
                           "reduce-overhead (CUDA only: forward and backward replayed as CUDA "
                           "graphs)", default="default"),
        cuda_graph=Param(Flag(), "cram / cram_nm on CUDA: replay the optimizer side of a step as "
                         "CUDA graphs, captured after two steps (bf16 or none)", default=False),
        dist_timeout=Param(IntRange(1), "torchrun: seconds a process waits for the others (start-up, "
                           "each collective) before it fails and torchrun may restart the group",
                           default=600),
        init_weights=Param(str, "start from these weights instead of a random initialisation "
                           "(torchvision, ffcv-cram, reference CrAM or DDP checkpoint; only at "
                           "the run's start: a resumed run continues from its checkpoint)",
                           default=""),
        trust_init_weights=Param(Flag(), "read an --training.init_weights file that needs full "
                                 "unpickling, which can run code: only for files you trust",
                                 default=False),
    )
    Section("cram", "CrAM / SAM").params(
        rho=Param(float, "perturbation radius", default=d("cram.rho", 0.05)),
        sparsities=Param(FloatList(), "sparsities drawn per step (cram)",
                         default=d("cram.sparsities", "0.5,0.7,0.9")),
        patterns=Param(StrList(), "N:M patterns drawn per step (cram_nm)", default="2:4,4:8"),
        plus_version=Param(Flag(), "add the clean gradient (CrAM+)", default=True),
        sparse_grad=Param(Flag(), "mask the compressed gradient", default=True),
        scope=Param(OneOf(["global", "uniform"]), "global: one threshold over every Conv/Linear "
                    "weight | uniform: each to the sparsity, but the first conv and the last Linear "
                    "(the reference's unif_prune)", default="global"),
        grad_norm=Param(Flag(), "normalise the ascent step by the gradient norm", default=False),
        seed=Param(int, "seed of the per-step sparsity draws", default=0),
        interval=Param(IntRange(1), "full CrAM step every k-th step, one pass on the others",
                       default=d("cram.interval", 1)),
        reuse=Param(Flag(), "one-pass steps add the latest compressed-point term (needs interval "
                    ">= 2)", default=d("cram.reuse", False)),
        second_pass_fraction=Param(float, "second pass on the first ceil(f * B) samples of each "
                                   "process's batch, f in (0, 1]",
                                   default=d("cram.second_pass_fraction", 1.0)),
        start_epoch=Param(float, "CrAM from this epoch on (fractions allowed); the steps before "
                          "it are plain base-optimizer (SGD) steps", default=d("cram.start_epoch", 0.0)),
        ramp=Param(Flag(), "raise the full-step rate linearly from 1/interval at start_epoch to "
                   "1 at the last step (needs interval >= 2)", default=d("cram.ramp", False)),
    )
    Section("lr", "learning-rate schedule").params(
        schedule=Param(OneOf(LR_SCHEDULES), "cosine | step | cyclic", default=d("lr.schedule", "cosine")),
        lr=Param(float, "peak learning rate for a global batch of lr.batch_size", default=d("lr.lr")),
        batch_size=Param(IntRange(0), "the global batch lr.lr belongs to (0: "
                         "training.global_batch_size)", default=d("lr.batch_size", 0)),
        scaling=Param(OneOf(LR_SCALINGS), "how lr.lr follows a global batch other than "
                      "lr.batch_size: linear | sqrt | none (unset: refused)", default=""),
        warmup_epochs=Param(float, "cosine: linear warm-up epochs", default=d("lr.warmup_epochs", 0)),
        end_epoch=Param(float, "cosine: epoch where it reaches 0 (0: the last)", default=0),
        step_milestones=Param(FloatList(allow_empty=True), "step: epochs where lr *= gamma", default=""),
        step_gamma=Param(float, "step: factor", default=0.1),
        peak_epoch=Param(float, "cyclic: epoch of the peak", default=d("lr.peak_epoch", 2)),
        per_iteration=Param(Flag(), "update every iteration (0: once per epoch, as the reference)",
                            default=d("lr.per_iteration", True)),
    )
    Section("resolution", "image resolution (imagenet style; progressive resizing)").params(
        min_res=Param(IntRange(0), "resolution until start_ramp", default=d("resolution.min_res", 0)),
        max_res=Param(IntRange(0), "resolution from end_ramp", default=d("resolution.max_res", 0)),
        start_ramp=Param(IntRange(0), "first epoch of the ramp", default=d("resolution.start_ramp", 0)),
        end_ramp=Param(IntRange(0), "last epoch of the ramp", default=d("resolution.end_ramp", 0)),
        val_res=Param(IntRange(0), "validation resolution", default=d("resolution.val_res", 0)),
    )
    Section("validation", "evaluation").params(
        every=Param(IntRange(0), "evaluate every N epochs (0: only after the last)", default=1),
        flip_tta=Param(Flag(), "average with the horizontally flipped image",
                       default=d("validation.flip_tta", False)),
        batch_size=Param(IntRange(1), "batch size per process", default=256),
    )
    Section("logging", "outputs").params(
        folder=Param(str, "run folder: config.json, log.jsonl, checkpoints, final_weights.pt",
                     required=True),
        wandb_project=Param(str, "log to this wandb project ('' for none)", default=""),
        wandb_mode=Param(OneOf(["online", "offline", "disabled"]), "wandb mode", default="offline"),
        wandb_name=Param(str, "wandb run name", default=""),
        steps=Param(IntRange(0), "also write steps.jsonl: a line every N steps with their loss, "
                    "img/s, samples, and the last one's lr and sparsity draw (0: none)", default=0),
    )
    Section("checkpoint", "checkpoints").params(
        every=Param(IntRange(0), "also keep checkpoint_epoch<N>.pt every N epochs (0: only the last)",
                    default=0),
        every_steps=Param(IntRange(0), "also write checkpoint_last.pt after every N steps of an "
                          "epoch, to resume mid-epoch (0: only at epoch ends)", default=0),
        resume=Param(Flag(), "continue from the run folder's checkpoint_last.pt", default=True),
        trust=Param(Flag(), "resume from a checkpoint_last.pt that needs full unpickling, which can "
                    "run code (e.g. one written by an older ffcv-cram): only for files you trust",
                    default=False),
        keep_best=Param(Flag(), "keep best.pt: the checkpoint of the epoch with the highest "
                        "validation top-1 (needs --data.val_dataset)", default=False),
    )


def check(cfg: dict, style: str) -> None:
    """Cross-field checks, all before any work starts."""
    t, c, r, lr = cfg["training"], cfg["cram"], cfg["resolution"], cfg["lr"]
    from ..models import available_models
    if cfg["model"]["arch"] not in available_models():
        raise UsageError(f"--model.arch={cfg['model']['arch']!r}: unknown model")
    if not all(0 <= s < 1 for s in c["sparsities"]):
        raise UsageError(f"--cram.sparsities={c['sparsities']}: each must be in [0, 1)")
    from ..sparsity.masks import parse_pattern
    try:
        for p in c["patterns"]:
            parse_pattern(p)
    except ValueError as err:
        raise UsageError(f"--cram.patterns: {err}") from None
    _check_resident(cfg["data"], style)
    from ..data.jpeg_decoders import jpeg_decoder_problem
    problem = (decode_problem(cfg["data"]["decode"], "--training.device", t["device"])
               or jpeg_decoder_problem(cfg["data"]["jpeg_decoder"]))
    if problem:
        raise UsageError(problem)
    if cfg["checkpoint"]["every_steps"] and cfg["data"]["order"] == "quasi_random":
        raise UsageError("--checkpoint.every_steps needs --data.order=random: FFCV's quasi_random "
                         "order cannot be replayed, so a resumed epoch would repeat and miss samples")
    if t["compile_mode"] != "default" and not t["compile"]:
        raise UsageError(f"--training.compile_mode={t['compile_mode']}: needs --training.compile=1")
    problem = _graph_compile_problem(t)
    if problem:
        raise UsageError(f"--training.compile_mode={t['compile_mode']}: {problem}")
    if c["rho"] < 0:
        raise UsageError(f"--cram.rho={c['rho']}: must be >= 0")
    _check_cost_options(c, t["optimizer"], t["epochs"])
    problem = _cuda_graph_problem(t, c)
    if problem:
        raise UsageError(f"--training.cuda_graph=1: {problem}")
    if lr["lr"] <= 0:
        raise UsageError(f"--lr.lr={lr['lr']}: must be > 0")
    effective_lr(t["global_batch_size"], lr["lr"], lr["batch_size"], lr["scaling"])  # the rest of
    # the batch plan needs the number of processes: checked when they have met (`loop.run`)
    if lr["schedule"] == "cosine" and lr["warmup_epochs"] >= (lr["end_epoch"] or t["epochs"]):
        raise UsageError("--lr.warmup_epochs must be smaller than the cosine's end epoch")
    if style == "imagenet":
        if not (r["min_res"] and r["max_res"] and r["val_res"]):
            raise UsageError("--resolution.min_res, max_res and val_res must be set (e.g. 160, 192, 256)")
        if r["min_res"] > r["max_res"] or r["start_ramp"] > r["end_ramp"]:
            raise UsageError("--resolution: need min_res <= max_res and start_ramp <= end_ramp")
        if cfg["data"]["cifar_inputs"] != "reference":
            raise UsageError(f"--data.cifar_inputs={cfg['data']['cifar_inputs']}: only for the "
                             "cifar style")
    if cfg["checkpoint"]["keep_best"] and not cfg["data"]["val_dataset"]:
        raise UsageError("--checkpoint.keep_best=1 keeps the epoch with the best validation top-1; "
                         "give --data.val_dataset")
    check_input_files(cfg)


def _check_resident(d: dict, style: str) -> None:
    if d["resident_limit_mb"] < 0:
        raise UsageError(f"--data.resident_limit_mb={d['resident_limit_mb']:g}: must be >= 0")
    if not d["resident"]:
        return
    if style != "cifar":
        raise UsageError("--data.resident=1: only for the cifar style (train_cifar.py), whose "
                         "images are small and of one size; use --data.resident=0")
    if d["order"] != "random":
        raise UsageError(f"--data.resident=1 draws its own seeded random order; leave "
                         f"--data.order at random (not {d['order']})")
    if d["decode"] == "gpu":
        raise UsageError("--data.resident=1 decodes each file once at start; leave --data.decode "
                         "at cpu (not gpu)")


def _check_cost_options(c: dict, optimizer: str, epochs: int) -> None:
    fraction = c["second_pass_fraction"]
    if not 0 <= c["start_epoch"] < epochs:
        raise UsageError(f"--cram.start_epoch={c['start_epoch']:g}: must be in [0, "
                         f"--training.epochs={epochs})")
    if c["ramp"] and c["interval"] < 2:
        raise UsageError("--cram.ramp=1 needs --cram.interval >= 2 (the ramp starts at one full "
                         "step in `interval`; with interval 1 every step is full already)")
    if not 0 < fraction <= 1:
        raise UsageError(f"--cram.second_pass_fraction={fraction:g}: must be in (0, 1]")
    if c["reuse"] and c["interval"] < 2:
        raise UsageError("--cram.reuse=1 needs --cram.interval >= 2 (with interval 1 every step "
                         "is a full CrAM step: nothing to reuse)")
    changed = [f"--cram.{k}" for k, default in (("interval", 1), ("reuse", False),
                                                  ("second_pass_fraction", 1.0),
                                                  ("start_epoch", 0.0), ("ramp", False))
               if c[k] != default]
    if changed and optimizer not in ("cram", "cram_nm"):
        raise UsageError(f"{', '.join(changed)}: only for --training.optimizer=cram or cram_nm "
                         f"(not {optimizer})")


def _graph_compile_problem(t: dict) -> str | None:
    """Why a CUDA-graph compile mode cannot run with these settings (None: it can)."""
    if t["compile_mode"] not in GRAPH_COMPILE_MODES:
        return None
    if t["device"] == "cpu":
        return ("replays CUDA graphs, and --training.device=cpu; use "
                "--training.compile_mode=default")
    import torch
    if not torch.cuda.is_available():
        return "replays CUDA graphs and no CUDA GPU is visible; use --training.compile_mode=default"
    return None


def _cuda_graph_problem(t: dict, c: dict) -> str | None:
    """Why --training.cuda_graph=1 cannot run with these settings (None: it can)."""
    if not t.get("cuda_graph"):
        return None
    conflict = cuda_graph_conflict(t["optimizer"], reuse=c["reuse"], grad_norm=c["grad_norm"])
    if conflict:
        name, fix = {"method": (f"--training.optimizer={t['optimizer']}",
                                "--training.optimizer=cram or cram_nm"),
                     "reuse": ("--cram.reuse=1", "--cram.reuse=0"),
                     "grad_norm": ("--cram.grad_norm=1", "--cram.grad_norm=0")}[conflict]
        return f"does not take {name}: it {WHY[conflict]}; use {fix}"
    if t["amp"] == "fp16":
        return ("fp16's loss scaling decides on the host whether a step happens; use "
                "--training.amp=bf16 (or none)")
    import torch
    if t["device"] == "cpu" or not torch.cuda.is_available():
        return "needs a CUDA GPU (--training.device=cuda or auto with a GPU visible)"
    return None


def parse_args(style: str, description: str, defaults: dict, argv=None) -> dict:
    """The style's options (the cifar style has no resolution section), ffcv-imagenet's key
    names read as ours."""
    declare(defaults)
    closed = {} if style == "imagenet" else {
        "resolution": "the cifar style trains at the stored resolution; resolution.* is for "
                      "train_imagenet.py"}
    return parse(description, argv, aliases=config_aliases, closed_sections=closed)


def main(style: str, description: str, defaults: dict, argv=None) -> int:
    treat_sigterm_as_ctrl_c()
    cfg = parse_args(style, description, defaults, argv)
    try:
        check(cfg, style)
        from .loop import run  # torch and ffcv: imported once the arguments are known to be valid
        from ..runtime.dist import is_main_process
        record = run(cfg, style)
    except (UsageError, AtomicWriteError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted; the last checkpoint is kept (re-run to resume)", 130)
    if not is_main_process():  # under torchrun, rank 0 speaks for the run
        return 0
    if record:
        print(f"done: {cfg['logging']['folder']}/final_weights.pt"
              + (f" (val top-1 {record['val_top1']:.2f}%)" if "val_top1" in record else ""))
    else:
        print(f"nothing to do: {cfg['logging']['folder']} already finished its "
              f"{cfg['training']['epochs']} epochs")
    return 0
