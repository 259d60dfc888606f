"""ffcv-imagenet's config key names, read as ours, so its published YAML files run as they are.

Each of its keys is renamed where ours means the same, converted where the meaning is the same
but the unit differs (its per-GPU batch), ignored with a note where torchrun or this trainer
already decides it, and refused with the reason where the meaning differs.
"""
from __future__ import annotations

from typing import Any

DIALECT = "ffcv-imagenet"

RENAMED = {
    "lr.lr_peak_epoch": "lr.peak_epoch",
    "lr.step_ratio": "lr.step_gamma",
    "model.use_blurpool": "model.blurpool",
    "training.use_blurpool": "model.blurpool",
    "training.bn_wd": "training.decay_bn_and_bias",
    "validation.lr_tta": "validation.flip_tta",
    "validation.resolution": "resolution.val_res",
}
LAUNCHER = "torchrun and --training.device decide these"
IGNORED = {  # its key -> why this trainer needs no value for it
    "dist.world_size": LAUNCHER,
    "dist.address": LAUNCHER,
    "dist.port": LAUNCHER,
    "training.distributed": LAUNCHER,
    "data.gpu": LAUNCHER,
    "lr.step_length": "only its step schedule reads it",
}
# In a file written for it, logging.folder is a parent of one sub-folder per run; ours is the run
# folder itself, so that value is dropped (and --logging.folder=RUN asked for).
PARENT_FOLDER = "logging.folder"
ONLY_OFF = {  # accepted (and ignored) at 0; anything else is refused with the reason
    "training.eval_only": "train_imagenet.py has no evaluate-only mode; eval_sparse.py evaluates "
                          "a checkpoint",
    "model.pretrained": "training starts from random weights here",
}
CONVERTED = {
    "lr.lr_schedule_type": "lr.schedule",
    "training.batch_size": "training.global_batch_size",
    "logging.log_level": "validation.every",
}
TARGETS = {**RENAMED, **CONVERTED, **{k: None for k in (*IGNORED, *ONLY_OFF)}}


def _integer(key: str, value, errors: list[str]) -> int | None:
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        return int(float(value))
    except (TypeError, ValueError):
        errors.append(f"{key}={value!r}: expected an integer")
        return None


def translate(given: dict[str, Any],
              from_file: bool) -> tuple[dict[str, Any], list[str], list[str]]:
    """`given` ({'section.key': value} of one config file or of the command line) with
    ffcv-imagenet's keys replaced by ours. Returns (values, notes, errors). Its file's
    logging.folder is ignored (a parent folder there, the run folder here)."""
    if not any(k in TARGETS for k in given):
        return given, [], []  # written for us
    values = {k: v for k, v in given.items() if k not in TARGETS}
    read, ignored, errors = [], [], []

    def put(theirs: str, ours: str, value) -> None:
        if ours in values:
            errors.append(f"{theirs} ({DIALECT}'s name for {ours}) and {ours} both given; "
                          f"keep one")
        values[ours] = value

    for theirs, value in given.items():
        if theirs in RENAMED:
            put(theirs, RENAMED[theirs], value)
            read.append(f"{theirs} -> {RENAMED[theirs]}")
        elif theirs in ONLY_OFF:
            if str(value).strip().lower() not in ("0", "false", "no", "off"):
                errors.append(f"{theirs}={value}: not supported: {ONLY_OFF[theirs]}; remove it")
            else:
                ignored.append(theirs)
        elif theirs == "lr.lr_schedule_type":
            if value == "cyclic":  # its schedule moves the lr at every iteration
                put(theirs, "lr.schedule", "cyclic")
                if "lr.per_iteration" not in given:
                    values["lr.per_iteration"] = True
                read.append(f"{theirs} -> lr.schedule (and lr.per_iteration=1)")
            elif value == "step":
                errors.append(f"{theirs}=step: {DIALECT}'s step schedule slides the lr down over "
                              "the epoch before each step, ours steps at once; use "
                              "--lr.schedule=step --lr.step_milestones=E1,E2,... "
                              "--lr.step_gamma=RATIO")
            else:
                errors.append(f"{theirs}={value!r}: expected cyclic or step")
        elif theirs == "logging.log_level":  # 0: evaluate only at the end
            level = _integer(theirs, value, errors)
            if level is not None:
                put(theirs, "validation.every", 0 if level == 0 else 1)
                read.append(f"{theirs} -> validation.every")
        elif theirs in IGNORED and theirs != "dist.world_size":
            ignored.append(theirs)
    _convert_batch(given, values, read, ignored, errors)
    if from_file and PARENT_FOLDER in values:
        del values[PARENT_FOLDER]
        ignored.append(PARENT_FOLDER)
    notes = []
    if read:
        notes.append(f"{DIALECT} keys read as ours: {', '.join(read)}")
    if ignored:
        reasons: dict[str, list[str]] = {}
        for key in ignored:
            why = ("a parent of run folders there: give --logging.folder=RUN"
                   if key == PARENT_FOLDER else IGNORED.get(key, "off"))
            reasons.setdefault(why, []).append(key)
        notes.append("ignored: " + ", ".join(f"{', '.join(keys)} ({why})"
                                             for why, keys in reasons.items()))
    return values, ["; ".join(notes)] if notes else [], errors


def _convert_batch(given, values, read, ignored, errors) -> None:
    """Its training.batch_size is per GPU: times dist.world_size, it is our global batch, and the
    batch its lr.lr belongs to (it never rescales the lr)."""
    per_gpu, world = given.get("training.batch_size"), given.get("dist.world_size")
    if per_gpu is None:
        if world is not None:
            ignored.append("dist.world_size")
        return
    if world is None:
        errors.append(f"training.batch_size={per_gpu}: {DIALECT}'s batch is per GPU; give "
                      "--training.global_batch_size (all processes together) instead, or "
                      "dist.world_size beside it")
        return
    per_gpu = _integer("training.batch_size", per_gpu, errors)
    world = _integer("dist.world_size", world, errors)
    if per_gpu is None or world is None:
        return
    global_batch = per_gpu * world
    if "training.global_batch_size" in values:
        errors.append("training.batch_size (ffcv-imagenet's per-GPU batch) and "
                      "training.global_batch_size both given; keep one")
    values["training.global_batch_size"] = global_batch
    values.setdefault("lr.batch_size", global_batch)
    read.append(f"training.batch_size {per_gpu} x dist.world_size {world} -> "
                f"training.global_batch_size {global_batch} (lr.lr's batch)")
