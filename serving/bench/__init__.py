"""Pieces of `python -m serving.benchmark`: load generator, TorchServe variants, report."""
