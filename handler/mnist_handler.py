"""TorchServe handler: one forward pass per batch, one answer (or one 4xx) per request, in order.

Accepted per request: image bytes (PNG, JPEG, BMP, GIF, WebP) as the body or the multipart field
``data``; JSON ``{"image": "<base64 or data: URL>"}``; JSON ``{"pixels": 28x28 or 784 numbers}``;
KServe's v1 protocol, ``{"instances": [...]}`` with one such object (or ``{"b64": ...}``) per
digit, answered as ``{"predictions": [...]}``. A bad request gets its own status and JSON error;
the rest of the batch is answered normally.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from handler.explain import DEFAULT_STEPS as EXPLAIN_STEPS
from handler.explain import integrated_gradients
from handler.preprocessing import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    InvalidInputError,
    declared_pixels,
    decode_image,
    pixels_to_array,
    preprocess,
)

logger = logging.getLogger(__name__)
S = TypeVar("S")
T = TypeVar("T")

#: What a request becomes: one digit, KServe v1's several, or why it cannot be read.
Prepared = torch.Tensor | list[torch.Tensor] | InvalidInputError

DEFAULT_TORCH_THREADS = 1
# Base64 inflates by 4/3; anything longer than this cannot decode to an acceptable image.
MAX_BASE64_CHARS = MAX_IMAGE_BYTES * 4 // 3 + 1024
# A JSON body around the largest image's base64, with room for its line breaks as escapes.
MAX_JSON_CHARS = 2 * MAX_BASE64_CHARS
STATUS_FOR_REASON = {"too_large": 413}
# What may precede a JSON body's first bracket: whitespace and a byte-order mark.
JSON_LEADING = "\ufeff \t\r\n"
# Enough of a body to see past a byte-order mark and some whitespace in UTF-32.
JSON_SNIFF_BYTES = 64
# The handler's metrics (declared in handler/metrics.yaml, named by Prometheus's conventions).
PREDICTIONS = "mnist_predictions_total"
REJECTED = "mnist_rejected_inputs_total"
BATCHES = "mnist_handler_batches_total"
PREPROCESS_SECONDS = "mnist_preprocess_seconds"
# Candidates in each answer's ``top``: the app offers two or three when the model is unsure.
TOP_CANDIDATES = 3
# Digits in one KServe v1 request, and the pixels of all their images together: bound the
# share of a batch's work one request can take (as much as one image of the largest size).
MAX_INSTANCES = 64
MAX_REQUEST_PIXELS = MAX_IMAGE_PIXELS


def choose_device(system_properties: dict[str, Any]) -> torch.device:
    """The GPU TorchServe assigned to this worker when CUDA works, else the CPU."""
    gpu_id = system_properties.get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def torch_threads(model_yaml_config: dict[str, Any] | None) -> int:
    """Intra-op threads per worker, from ``handler: {torch_threads: N}`` in model-config.yaml."""
    handler_config = (model_yaml_config or {}).get("handler") or {}
    return max(1, int(handler_config.get("torch_threads", DEFAULT_TORCH_THREADS)))


class MNISTHandler(BaseHandler):
    """Classifies handwritten digits; see the module docstring for the accepted inputs."""

    def initialize(self, context: Any) -> None:
        """Load the TorchScript model on the chosen device and warm it up once."""
        properties = context.system_properties
        self.manifest = context.manifest
        self.device = choose_device(properties)
        torch.set_num_threads(torch_threads(getattr(context, "model_yaml_config", None)))
        model_file = Path(properties["model_dir"]) / self.manifest["model"]["serializedFile"]
        with warnings.catch_warnings():
            # torch 2.14 calls TorchScript deprecated; TorchServe loads exactly that, and the
            # warning would fill every worker's log. (model.torchscript does the same; the archive
            # carries only handler/, so this cannot import it.)
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
            self.model = torch.jit.load(str(model_file), map_location=self.device).eval()
        self.model_version = str(self.manifest["model"].get("modelVersion", "unknown"))
        self.inference(torch.zeros(1, 1, 28, 28))
        self.initialized = True
        logger.info("MNIST model %s loaded on %s", self.model_version, self.device)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        """Answer every request of the batch, in order; bad inputs get their own 4xx.

        TorchServe marks each request to ``/explanations`` with the header ``explain: True``
        and may batch them with predictions, so the flag is read per request (BaseHandler only
        looks at the first): predictions get one forward pass, explanations their own.
        """
        self.context = context
        prepared = self.preprocess(data)
        wanted = [context.get_request_header(i, "explain") == "True" for i in range(len(data))]
        for i, item in enumerate(prepared):
            if wanted[i] and isinstance(item, list):
                prepared[i] = InvalidInputError(
                    "bad_json", 'an explanation takes one image, not KServe "instances"'
                )
        explain = [
            i for i, item in enumerate(prepared) if wanted[i] and isinstance(item, torch.Tensor)
        ]
        predict = [
            i for i, item in enumerate(prepared)
            if i not in explain and not isinstance(item, InvalidInputError)
        ]  # fmt: skip
        answers: dict[int, Any] = {}
        digits = [image for i in predict for image in _images(prepared[i])]
        predicted = self.postprocess(self.inference(torch.stack(digits))) if digits else []
        remaining = iter(predicted)
        for i in predict:
            if isinstance(prepared[i], list):  # KServe v1: one answer per instance
                answers[i] = {"predictions": [next(remaining) for _ in prepared[i]]}
            else:
                answers[i] = next(remaining)
        if explain:
            batch = torch.stack([prepared[i] for i in explain])  # type: ignore[misc]
            answers.update(zip(explain, self.explain_handle(batch, data), strict=True))
        responses = []
        for index, item in enumerate(prepared):
            if isinstance(item, InvalidInputError):
                responses.append(self._reject(index, item))
            else:
                context.set_response_content_type(index, "application/json")
                responses.append(answers[index])
        self._record_batch(len(data), predicted, prepared)
        return responses

    def preprocess(self, data: list[dict[str, Any]]) -> list[Prepared]:
        """Each request -> a 1x28x28 tensor (a list of them for KServe's instances), or the
        error that explains why it cannot be read."""
        started = time.perf_counter()
        prepared = [self._prepare(request) for request in data]
        seconds = (time.perf_counter() - started) / max(1, len(data))
        self._metric(PREPROCESS_SECONDS, MetricTypes.GAUGE).add_or_update(
            seconds, [self.context.model_name]
        )
        return prepared

    def inference(self, batch: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One forward pass for the whole batch; returns Nx10 probabilities on the CPU.

        The model file reads each digit as given and upright and divides by the fitted
        temperature itself (``model.calibration.served_model``), so these probabilities are
        calibrated.
        """
        with torch.inference_mode():
            logits = self.model(batch.to(self.device))
        return torch.softmax(logits.float(), dim=1).cpu()

    def postprocess(self, probabilities: torch.Tensor) -> list[dict[str, Any]]:
        """Nx10 probabilities -> the JSON answer of each request, with the likeliest digits
        first in ``top`` so a client can offer them when the model is unsure."""
        top = probabilities.topk(TOP_CANDIDATES, dim=1)
        return [
            {
                "digit": int(digits[0]),
                "confidence": float(values[0]),
                "probabilities": row.tolist(),
                "top": [
                    {"digit": int(digit), "probability": float(value)}
                    for digit, value in zip(digits, values, strict=True)
                ],
                "model_version": self.model_version,
            }
            for digits, values, row in zip(top.indices, top.values, probabilities, strict=True)
        ]

    def explain_handle(
        self, data_preprocess: torch.Tensor, raw_data: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Nx1x28x28 inputs -> each one's integrated-gradients map for its predicted digit."""
        explained = integrated_gradients(self.model, data_preprocess.to(self.device))
        return [
            {
                "digit": item.digit,
                "method": "integrated_gradients",
                "baseline": "black",
                "steps": EXPLAIN_STEPS,
                "attributions": item.attributions.tolist(),
                "logit": item.logit,
                "baseline_logit": item.baseline_logit,
                "model_version": self.model_version,
            }
            for item in explained
        ]

    def _prepare(self, request: dict[str, Any]) -> Prepared:
        try:
            return _tensor_from_request(request)
        except InvalidInputError as error:
            return error
        except Exception:  # a new way for an input to be unreadable must not fail the batch
            logger.exception("Unexpected failure reading a request")
            return InvalidInputError("unreadable", "the input could not be read as a digit")

    def _reject(self, index: int, error: InvalidInputError) -> dict[str, Any]:
        code = STATUS_FOR_REASON.get(error.reason, 400)
        self.context.set_response_status(code, error.reason, index)
        self.context.set_response_content_type(index, "application/json")
        return {
            "code": code,
            "type": "InvalidInput",
            "reason": error.reason,
            "message": error.message,
        }

    def _record_batch(
        self,
        batch_size: int,
        answers: Any,
        prepared: list[Prepared],
    ) -> None:
        model = self.context.model_name
        self._metric(BATCHES).add_or_update(1, [str(batch_size), model])
        for digit, count in Counter(answer["digit"] for answer in answers).items():
            self._metric(PREDICTIONS).add_or_update(count, [str(digit), model])
        reasons = Counter(item.reason for item in prepared if isinstance(item, InvalidInputError))
        for reason, count in reasons.items():
            self._metric(REJECTED).add_or_update(count, [reason, model])

    def _metric(self, name: str, kind: MetricTypes = MetricTypes.COUNTER) -> Any:
        """A metric declared in handler/metrics.yaml, with exactly its dimensions (so no
        camelCase ModelName and Level are added, as `add_counter` would)."""
        return self.context.metrics.get_metric(name, kind)


def _images(item: Any) -> list[torch.Tensor]:
    return item if isinstance(item, list) else [item]


def _tensor_from_request(request: dict[str, Any]) -> torch.Tensor | list[torch.Tensor]:
    """Find the payload (multipart field ``data`` or the body) and read it by its shape."""
    payload = request.get("data")
    if payload is None:
        payload = request.get("body")
    if isinstance(payload, bytes | bytearray) and _looks_like_json(bytes(payload)):
        payload = _parse_json(bytes(payload))
    elif isinstance(payload, str):
        text = payload.lstrip(JSON_LEADING)
        payload = _parse_json(text) if text[:1] in ("{", "[") else payload
    if isinstance(payload, dict):
        return _tensor_from_json(payload)
    if isinstance(payload, str):
        return preprocess(decode_image(_decode_base64(payload)))
    if isinstance(payload, bytes | bytearray):
        return preprocess(decode_image(payload))
    if payload is None and request:
        fields = ", ".join(sorted(map(str, request)))
        raise InvalidInputError(
            "empty", f'send the image as the body or the multipart field "data" (got: {fields})'
        )
    if payload is None:
        raise InvalidInputError("empty", "the request carried no image data")
    raise InvalidInputError("bad_json", 'expected a JSON object with "image" or "pixels"')


def _looks_like_json(payload: bytes) -> bool:
    """A JSON object or array in UTF-8 (with or without a byte-order mark), UTF-16 or UTF-32.

    TorchServe hands such a body over undecoded when it cannot read it as plain UTF-8 itself;
    the encoding is told from its first bytes as ``json.loads`` does for bytes, and only the
    beginning is decoded here, so image bytes cost nothing.
    """
    head = payload[:JSON_SNIFF_BYTES].decode(json.detect_encoding(payload), errors="ignore")
    return head.lstrip(JSON_LEADING)[:1] in ("{", "[")


def _parse_json(text: str | bytes) -> Any:
    """JSON from text, or from bytes in any encoding ``json.loads`` detects."""
    if len(text) > MAX_JSON_CHARS * _bytes_per_char(text):
        raise InvalidInputError("too_large", "the JSON body is larger than any valid input")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInputError("bad_json", f"the body is not valid JSON: {error}") from error
    except RecursionError as error:
        raise InvalidInputError("bad_json", "the JSON is nested too deeply") from error


def _bytes_per_char(text: str | bytes) -> int:
    """At most how many of `text`'s units make one character: 1 for text and UTF-8."""
    if isinstance(text, str):
        return 1
    encoding = json.detect_encoding(text)
    return 4 if "32" in encoding else 2 if "16" in encoding else 1


def _tensor_from_json(payload: dict[str, Any]) -> torch.Tensor | list[torch.Tensor]:
    if "instances" in payload:
        return _instances(payload["instances"])
    return _to_tensor(_source(payload))


def _instances(instances: Any) -> list[torch.Tensor]:
    """KServe v1's ``instances``: each an object this handler reads, or ``{"b64": ...}``."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError("bad_json", '"instances" must be a non-empty list')
    if len(instances) > MAX_INSTANCES:
        raise InvalidInputError(
            "too_large", f"{len(instances)} instances; one request takes at most {MAX_INSTANCES}"
        )
    sources, pixels = [], 0
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and "b64" in instance:
            if "image" in instance or "pixels" in instance:
                raise InvalidInputError(
                    "bad_json", f'instance {index} has "b64" and another image; send one of them'
                )
            instance = {"image": instance["b64"]}
        if not isinstance(instance, dict):
            raise InvalidInputError("bad_json", f"instance {index} is not a JSON object")
        sources.append(_for_instance(index, _source, instance))
        pixels += _for_instance(index, _declared_pixels, sources[-1])
    if pixels > MAX_REQUEST_PIXELS:
        raise InvalidInputError(
            "too_large",
            f"the instances' images have {pixels:,} pixels in all; "
            f"one request takes at most {MAX_REQUEST_PIXELS:,}",
        )
    return [_for_instance(index, _to_tensor, src) for index, src in enumerate(sources)]


def _for_instance(index: int, read: Callable[[S], T], instance: S) -> T:
    """`read(instance)`, with a refusal's message naming the instance."""
    try:
        return read(instance)
    except InvalidInputError as error:
        raise InvalidInputError(error.reason, f"instance {index}: {error.message}") from error


def _source(payload: dict[str, Any]) -> bytes | np.ndarray:
    """A JSON object's image: the encoded bytes of ``image``, or the array of ``pixels``."""
    if "pixels" in payload and "image" in payload:
        raise InvalidInputError(
            "bad_json", 'the body has both "image" and "pixels"; send one of them'
        )
    if "pixels" in payload:
        return pixels_to_array(payload["pixels"])
    image = payload.get("image")
    if isinstance(image, str):
        return _decode_base64(image)
    raise InvalidInputError(
        "bad_json", 'expected {"image": "<base64 or data: URL>"} or {"pixels": [...]}'
    )


def _declared_pixels(source: bytes | np.ndarray) -> int:
    """The pixels an encoded image will decode to (0 for JSON pixels, already bounded)."""
    return declared_pixels(source) if isinstance(source, bytes) else 0


def _to_tensor(source: bytes | np.ndarray) -> torch.Tensor:
    return preprocess(decode_image(source) if isinstance(source, bytes) else source)


def _decode_base64(text: str) -> bytes:
    """Plain base64 or a ``data:image/...;base64,`` URL -> bytes."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InvalidInputError("bad_base64", "a data: URL must be base64-encoded")
    text = "".join(text.split())  # line breaks as `base64` wraps it at 76 characters
    if len(text) > MAX_BASE64_CHARS:
        raise InvalidInputError("too_large", f"the image is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidInputError("bad_base64", "the image is not valid base64") from error
