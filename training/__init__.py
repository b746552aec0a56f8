"""Training: MNIST on disk and in memory, the training loop, plots and TorchScript export."""

import os

# GNU OpenMP (PyTorch's on Linux) spins 300,000 times before an idle thread sleeps: fast on a
# free machine, very slow when other processes share the cores; never spinning is slow on a
# free one. A short spin does well on both (docs/performance.md, "Training"). Set here, so every
# entry point (`python -m training`, `training.retrain`) has it before torch loads OpenMP.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
