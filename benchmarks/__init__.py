"""`python -m benchmarks`: the model in-process against TorchServe over REST and gRPC."""
