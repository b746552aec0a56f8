"""The project's generated TorchServe inference stubs (messages, services), imported lazily
so that the REST-only parts of the benchmark do not need grpc at import time."""

from __future__ import annotations

from types import ModuleType


def inference_module() -> tuple[ModuleType, ModuleType]:
    """(`*_pb2` messages, `*_pb2_grpc` services) of TorchServe's inference API."""
    from serving.grpc_stubs import inference_pb2, inference_pb2_grpc

    return inference_pb2, inference_pb2_grpc
