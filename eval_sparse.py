"""One-shot pruning sweeps with batch-norm tuning: accuracy vs sparsity for one or more checkpoints.

    python eval_sparse.py --eval.checkpoint=runs/cram/final_weights.pt,runs/sgd/final_weights.pt \
        --eval.labels=CrAM+,SGD --model.arch=resnet50 --data.val_dataset=val.beton \
        --data.calib_dataset=calib_1000.beton --prune.method=global,nm \
        --prune.sparsities=0.5,0.7,0.8,0.9 --prune.nm=2:4,4:8 --out.dir=sweeps/rn50
    torchrun --standalone --nproc_per_node=8 eval_sparse.py ...   (the points split over 8 GPUs)

Model and data settings not given are taken from the checkpoint's training run (its config.json).
"""
import os
import sys

from fastargs import Param, Section
from fastargs.validation import OneOf

from ffcv_cram.atomic import AtomicWriteError
from ffcv_cram.choices import COMPILE_MODES
from ffcv_cram.config import (EXIT_USAGE, FloatList, Flag, IntRange, StrList, UsageError, fail,
                              given_keys, parse)
from ffcv_cram.data.loading_params import loading_params
from ffcv_cram.interrupts import treat_sigterm_as_ctrl_c
from ffcv_cram.sweep.precision import EVAL_AMP

Section("eval", "checkpoints and evaluation").params(
    checkpoint=Param(StrList(), "checkpoint file(s), comma-separated", required=True),
    labels=Param(StrList(allow_empty=True), "a name per checkpoint (default: file names)", default=""),
    batch_size=Param(IntRange(1), "evaluation batch size", default=256),
    device=Param(OneOf(["auto", "cpu", "cuda"]), "auto: cuda when available", default="auto"),
    trust_checkpoint=Param(Flag(), "load checkpoints that need full unpickling, which can run code "
                           "they carry: only for files you trust", default=False),
    amp=Param(OneOf(EVAL_AMP), "autocast of every evaluation and of batch-norm tuning: auto (bf16 "
              "on CUDA, none on the CPU) | bf16 | none (float32)", default="auto"),
    compile=Param(Flag(), "torch.compile the model for its evaluations (pruning and batch-norm "
                  "tuning stay eager; the first evaluation compiles)", default=False),
    compile_mode=Param(OneOf(COMPILE_MODES), "with compile: default | max-autotune-no-cudagraphs",
                       default="default"),
    dist_timeout=Param(IntRange(1), "torchrun: seconds a process waits for the others (start-up, "
                       "then each round of points: about one point's time)", default=1800),
)
Section("model", "architecture (unset: from the checkpoint's training run, when it has one)").params(
    arch=Param(str, "resnet50, resnet20, ... (as for training)", default="resnet50"),
    num_classes=Param(IntRange(0), "0: from <val_dataset>.classes.json", default=0),
    blurpool=Param(Flag(), "the checkpoint was trained with --model.blurpool=1", default=False),
)
Section("data", "datasets").params(
    val_dataset=Param(str, "validation .beton", required=True),
    calib_dataset=Param(str, "calibration .beton (e.g. write_datasets.py --cfg.calibration)", default=""),
    train_dataset=Param(str, "or: training .beton to draw --bnt.calib_size images from", default=""),
    style=Param(OneOf(["imagenet", "cifar"]), "pipeline style (unset: the training run's)",
                default="imagenet"),
    resolution=Param(IntRange(1), "imagenet style: evaluation and calibration resolution (unset: "
                     "the training run's validation resolution)", default=224),
    **loading_params("evaluation"),
)
Section("prune", "one-shot pruning").params(
    method=Param(StrList(), "global | uniform | nm (several: comma-separated)", default="global"),
    sparsities=Param(FloatList(), "global/uniform target sparsities", default="0.5,0.7,0.8,0.9"),
    nm=Param(StrList(), "N:M patterns for method nm", default="2:4"),
)
Section("bnt", "batch-norm tuning").params(
    batches=Param(IntRange(0), "calibration batches (reference: 100; 0: no batch-norm tuning, "
                  "no calibration data)", default=100),
    batch_size=Param(IntRange(1), "calibration batch size (reference: 128)", default=128),
    augment=Param(Flag(), "train-time augmentation on calibration images (reference: on)", default=True),
    momentum=Param(str, "BN momentum: a number (reference 0.1) or 'cumulative'", default="0.1"),
    calib_size=Param(IntRange(1), "with --data.train_dataset: images drawn (reference 1000)", default=1000),
    seed=Param(int, "seed of the calibration subset and its order", default=0),
)
Section("out", "outputs").params(
    dir=Param(str, "folder for results.json, results.csv, accuracy_vs_sparsity.png", required=True),
    save_pruned=Param(Flag(), "also save each pruned + BNT model (state_dict and masks)", default=False),
)


def _fail(message: str, code: int = EXIT_USAGE, same_on_every_rank: bool = False):
    """A mistake that every torchrun process meets alike is said by rank 0 alone."""
    if same_on_every_rank and os.environ.get("RANK", "0") != "0":
        sys.exit(code)
    fail(message, code)


def main(argv=None) -> int:
    treat_sigterm_as_ctrl_c()
    cfg = parse(__doc__.splitlines()[0], argv)
    try:
        from ffcv_cram.sweep.job import run_sweep  # torch, ffcv: after the arguments parse
        done = run_sweep(cfg, given_keys())
    except (UsageError, AtomicWriteError) as err:
        _fail(str(err), same_on_every_rank=getattr(err, "same_on_every_rank", False))
    except KeyboardInterrupt:
        fail("interrupted; results are written only when the sweep completes", 130)
    if done is None:  # a torchrun process other than rank 0: rank 0 reports
        return 0
    rows, paths, table = done
    print(table)
    print(f"results: {paths['json']}, {paths['csv']}\nplot: {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
