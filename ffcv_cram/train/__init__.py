"""The shared trainer behind train_cifar.py and train_imagenet.py."""
