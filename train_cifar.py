"""Train a CIFAR-sized model (ResNet-20/18, VGG-16) with CrAM, SAM or SGD on FFCV .beton files.

Defaults: the reference's ResNet-20 CrAM+ Multi recipe (SPEC §4). Examples:
    python train_cifar.py --config-file cifar_configs/rn20_cram_plus_multi.yaml \
        --data.train_dataset=cifar_train.beton --data.val_dataset=cifar_val.beton \
        --logging.folder=runs/rn20_cram
    torchrun --nproc_per_node=2 train_cifar.py ...     (one process per GPU, or gloo on the CPU)
"""
import sys

from ffcv_cram.train import cli

DEFAULTS = {
    "model.arch": "resnet20", "training.optimizer": "cram", "training.epochs": 200,
    "training.global_batch_size": 128, "lr.batch_size": 128, "training.weight_decay": 5e-4,
    "lr.schedule": "cosine",
    "lr.lr": 0.1, "lr.warmup_epochs": 5, "lr.per_iteration": False, "cram.rho": 0.2,
    "cram.sparsities": "0.3,0.4,0.5,0.6,0.7,0.8,0.9",
}


def main(argv=None) -> int:
    return cli.main("cifar", __doc__.splitlines()[0], DEFAULTS, argv)


if __name__ == "__main__":
    sys.exit(main())
