"""Neural-network helpers: data and training loops for the shipped examples."""

from .datasets import DATASETS, load_cifar10, load_dataset, load_mnist
from .layers import (
    AvgPool2d,
    Conv2d,
    Flatten,
    activation_gain,
    normalisation_free_mlp,
    small_convnet,
)

__all__ = [
    "DATASETS",
    "AvgPool2d",
    "Conv2d",
    "Flatten",
    "activation_gain",
    "load_cifar10",
    "load_dataset",
    "load_mnist",
    "normalisation_free_mlp",
    "small_convnet",
]
