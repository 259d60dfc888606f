"""Train an ImageNet model (ResNet-50 by default) with CrAM, SAM or SGD on FFCV .beton files.

Defaults: the reference's ResNet-50 CrAM+ Multi recipe (SPEC §4; a global batch of 512 at lr 0.2,
whatever the number of processes).
    torchrun --standalone --nproc_per_node=8 train_imagenet.py \
        --config-file rn50_configs/rn50_cram_plus_multi_100_epochs.yaml \
        --data.train_dataset=/data/ffcv/train_500_0.50_90.beton \
        --data.val_dataset=/data/ffcv/val_500_0.50_90.beton --logging.folder=runs/rn50_cram
"""
import sys

from ffcv_cram.train import cli

DEFAULTS = {
    "model.arch": "resnet50", "training.optimizer": "cram", "training.epochs": 100,
    "training.global_batch_size": 512, "lr.batch_size": 512, "training.weight_decay": 1e-4,
    "training.amp": "bf16",
    "lr.schedule": "cosine", "lr.lr": 0.2, "lr.warmup_epochs": 5, "lr.per_iteration": False,
    "cram.rho": 0.05, "cram.sparsities": "0.5,0.7,0.9", "resolution.min_res": 224,
    "resolution.max_res": 224, "resolution.start_ramp": 0, "resolution.end_ramp": 0,
    "resolution.val_res": 224,
}


def main(argv=None) -> int:
    return cli.main("imagenet", __doc__.splitlines()[0], DEFAULTS, argv)


if __name__ == "__main__":
    sys.exit(main())
