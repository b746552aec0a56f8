"""The committed gRPC stubs are what `python -m serving.grpc_codegen` makes from the .proto."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serving.grpc_codegen import STUBS_DIR, generate

# Lines where protoc and grpcio-tools stamp their own version; everything else must match.
VERSION_STAMPS = (
    (re.compile(r"^# Protobuf Python Version: .*$", re.M), "# Protobuf Python Version: X"),
    (
        re.compile(r"ValidateProtobufRuntimeVersion\([^)]*\)", re.S),
        "ValidateProtobufRuntimeVersion(X)",
    ),
    (re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M), "GRPC_GENERATED_VERSION = X"),
)


def without_version_stamps(text: str) -> str:
    for pattern, replacement in VERSION_STAMPS:
        text = pattern.sub(replacement, text)
    return text


@pytest.mark.parametrize("name", ["__init__.py", "inference_pb2.py", "inference_pb2_grpc.py"])
def test_committed_stubs_match_a_fresh_generation(tmp_path: Path, name: str) -> None:
    pytest.importorskip("grpc_tools")
    generate(tmp_path)
    fresh = without_version_stamps((tmp_path / name).read_text())
    committed = without_version_stamps((STUBS_DIR / name).read_text())
    assert committed == fresh, f"run `python -m serving.grpc_codegen` to refresh {name}"


def test_stubs_speak_torchserves_wire_contract() -> None:
    from serving.grpc_stubs import inference_pb2

    package = "org.pytorch.serve.grpc.inference"
    assert inference_pb2.DESCRIPTOR.package == package
    service = inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    assert (
        service.methods_by_name["Predictions"].input_type.full_name
        == f"{package}.PredictionsRequest"
    )
    assert service.methods_by_name["Ping"].input_type.full_name == "google.protobuf.Empty"
    request_fields = {
        field.name: field.number for field in inference_pb2.PredictionsRequest.DESCRIPTOR.fields
    }
    assert request_fields == {"model_name": 1, "model_version": 2, "input": 3}
    assert inference_pb2.PredictionResponse.DESCRIPTOR.fields_by_name["prediction"].number == 1


def test_stubs_import_as_a_package_without_path_tricks() -> None:
    text = (STUBS_DIR / "inference_pb2_grpc.py").read_text()
    assert "from . import inference_pb2" in text
    assert not re.search(r"^import inference_pb2", text, re.M)
