"""Training: MNIST on disk and in memory, the training loop, plots and TorchScript export."""
