"""TorchServe handler for MNIST and the one preprocessing module shared by every part."""
