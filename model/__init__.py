"""The MNIST CNN and in-process prediction."""

from model.net import MnistNet, count_parameters

__all__ = ["MnistNet", "count_parameters"]
