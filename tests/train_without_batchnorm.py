"""train_imagenet.py's command line with one more model, `small_conv_net_no_bn` (tests/nets.py
without BatchNorm): per-process BatchNorm statistics differ with the number of processes, so only a
model without them trains the same steps at any world size. Run with the repository on PYTHONPATH."""
import sys

from ffcv_cram.models.registry import CIFAR_MODELS
from ffcv_cram.train.cli import main
from nets import SmallConvNet

CIFAR_MODELS["small_conv_net_no_bn"] = lambda num_classes: SmallConvNet(num_classes, batchnorm=False)

if __name__ == "__main__":
    sys.exit(main("imagenet", "train without BatchNorm", {}))
