"""Closed-loop load generator: N callers, each sending its next request as soon as its last one
is answered, over aiohttp (REST, one kept-alive connection per caller) or grpc.aio (gRPC).

It runs in the benchmark's own process, on the same cores as TorchServe, so every run records
its own CPU time: the report can then show whether the generator rather than the server was
the limit.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import psutil

from serving.grpc_stubs import inference_pb2, inference_pb2_grpc
from training.drawings import drawings

REQUEST_TIMEOUT_S = 10.0
MAX_ERROR_SAMPLES = 5
# What the drawing app sends: black ink on a transparent canvas PNG.
DRAWING_STYLE = "canvas_transparent"


@dataclass(frozen=True)
class Payload:
    """One request body (an encoded drawing) and the digit it shows."""

    body: bytes
    label: int


@dataclass(frozen=True)
class LoadSpec:
    """Callers in flight and how long to measure; warm-up requests are sent but not recorded."""

    concurrency: int
    seconds: float
    warmup_requests: int = 0


class RequestFailedError(Exception):
    """A request that got no usable prediction (status, transport error or bad body)."""


def load_payloads(count: int, data_dir: Path) -> list[Payload]:
    """The first `count` MNIST test digits drawn like the browser canvas draws them."""
    return [
        Payload(body, label) for body, label in drawings(DRAWING_STYLE, count, data_dir=data_dir)
    ]


def latency_summary(latencies_ms: Sequence[float], seconds: float) -> dict[str, float]:
    """Median, p90, p99 and max of the completed calls, and calls per second of `seconds`."""
    values = np.asarray(latencies_ms, dtype=float) if len(latencies_ms) else np.asarray([np.nan])
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "median_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(values.max()),
        "requests_per_s": len(latencies_ms) / seconds if seconds > 0 else 0.0,
    }


@dataclass
class LoadResult:
    """Raw outcome of one run; `summary()` gives the figures the report prints."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    correct: int = 0
    duration_s: float = 0.0
    client_cpu_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    def record_error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(message)

    def summary(self) -> dict[str, Any]:
        done = len(self.latencies_ms)
        requests = done + self.errors
        return {
            "requests": requests,
            "errors": self.errors,
            **latency_summary(self.latencies_ms, self.duration_s),
            "accuracy": self.correct / done if done else 0.0,
            "client_cpu_ms_per_request": 1000.0 * self.client_cpu_s / max(requests, 1),
            "client_cpu_share": self.client_cpu_s / self.duration_s if self.duration_s else 0.0,
            "error_samples": list(self.error_samples),
        }


Sender = Callable[[bytes], Awaitable[int]]


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (grpc's C-core threads included)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


async def _callers(
    send: Sender, payloads: Sequence[Payload], spec: LoadSpec, result: LoadResult, limit: int
) -> None:
    """`spec.concurrency` callers sharing `limit` requests and a `spec.seconds` deadline."""
    order = itertools.cycle(payloads)
    deadline = time.perf_counter() + spec.seconds
    issued = 0

    async def caller() -> None:
        nonlocal issued
        while issued < limit and time.perf_counter() < deadline:
            issued += 1
            payload = next(order)
            started = time.perf_counter()
            try:
                digit = await send(payload.body)
            except RequestFailedError as error:
                result.record_error(str(error))
                continue
            result.latencies_ms.append(1000.0 * (time.perf_counter() - started))
            result.correct += int(digit == payload.label)

    await asyncio.gather(*(caller() for _ in range(spec.concurrency)))


async def _drive(
    send: Sender, payloads: Sequence[Payload], spec: LoadSpec, on_start: Callable[[], None] | None
) -> LoadResult:
    """Open every connection with the warm-up requests, call `on_start`, then measure."""
    if spec.warmup_requests:
        await _callers(send, payloads, spec, LoadResult(), spec.warmup_requests)
    if on_start:
        on_start()
    result = LoadResult()
    cpu_before, wall_before = _cpu_seconds(), time.perf_counter()
    await _callers(send, payloads, spec, result, limit=10**9)
    result.duration_s = time.perf_counter() - wall_before
    result.client_cpu_s = _cpu_seconds() - cpu_before
    return result


def _digit_from(body: bytes) -> int:
    try:
        return int(json.loads(body)["digit"])
    except (ValueError, KeyError, TypeError) as error:
        raise RequestFailedError(f"unexpected answer {body[:80]!r}") from error


async def run_rest(
    url: str,
    headers: dict[str, str],
    payloads: Sequence[Payload],
    spec: LoadSpec,
    on_start: Callable[[], None] | None = None,
) -> LoadResult:
    """POST each drawing as the raw request body to `url`."""
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(body: bytes) -> int:
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                raise RequestFailedError(f"{type(error).__name__}: {error}") from error
            if response.status != 200:
                raise RequestFailedError(f"HTTP {response.status}: {answer[:120]!r}")
            return _digit_from(answer)

        return await _drive(send, payloads, spec, on_start)


async def run_grpc(
    target: str,
    model_name: str,
    metadata: Sequence[tuple[str, str]],
    payloads: Sequence[Payload],
    spec: LoadSpec,
    on_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Unary `Predictions` calls, all multiplexed on one channel (one HTTP/2 connection).

    One channel rather than one per caller: fewer, fuller reads and writes cost less CPU per
    call on both sides (see docs/performance.md).
    """
    channel = grpc.aio.insecure_channel(target)
    stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)

    async def send(body: bytes) -> int:
        request = inference_pb2.PredictionsRequest(model_name=model_name, input={"data": body})
        try:
            response = await stub.Predictions(
                request, metadata=tuple(metadata), timeout=REQUEST_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            raise RequestFailedError(f"gRPC {error.code().name}: {error.details()}") from error
        return _digit_from(response.prediction)

    try:
        return await _drive(send, payloads, spec, on_start)
    finally:
        await channel.close()
