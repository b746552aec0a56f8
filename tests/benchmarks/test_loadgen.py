"""The load generator against small local REST and gRPC servers, and its statistics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from aiohttp import web

from benchmarks.loadgen import LoadSpec, Payload, latency_summary, run_grpc, run_rest
from benchmarks.served import batch_counts, mean_batch_size
from serving.grpc_stubs import inference_pb2, inference_pb2_grpc
from serving.server import free_ports

# Each body names the digit the fake server answers; the label is what the generator expects.
PAYLOADS = [Payload(b"1", 1), Payload(b"2", 2), Payload(b"3", 7), Payload(b"fail", 4)]
TOKEN = "Bearer secret"


def test_latency_summary_percentiles_and_rate() -> None:
    summary = latency_summary([float(ms) for ms in range(1, 101)], seconds=4.0)
    assert summary["median_ms"] == pytest.approx(50.5)
    assert summary["p90_ms"] == pytest.approx(90.1)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == 100.0
    assert summary["requests_per_s"] == 25.0


def test_mean_batch_size_from_prometheus_counters() -> None:
    text = "\n".join(
        [
            "# TYPE mnist_handler_batches_total counter",
            'mnist_handler_batches_total{batch_size="1",Hostname="a"} 2.0',
            'mnist_handler_batches_total{batch_size="1",Hostname="b"} 2.0',
            'mnist_handler_batches_total{batch_size="8",Hostname="a"} 11.0',
            "# TYPE mnist_predictions_total counter",
            'mnist_predictions_total{digit="3"} 50.0',
            "",
        ]
    )
    after = batch_counts(text)
    assert after == {1: 4.0, 8: 11.0}
    # 2 batches of 1 and 10 batches of 8 since the first reading: 82 requests in 12 batches.
    assert mean_batch_size({1: 2.0, 8: 1.0}, after) == pytest.approx(82 / 12)
    assert mean_batch_size(after, after) is None


@pytest.fixture
async def rest_url() -> AsyncIterator[str]:
    """A REST server answering {"digit": body} and HTTP 500 for a body that is no number."""

    async def predict(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != TOKEN:
            return web.Response(status=400, text="no token")
        body = await request.read()
        if not body.isdigit():
            return web.Response(status=500, text="broken")
        return web.json_response({"digit": int(body)})

    app = web.Application()
    app.router.add_post("/predictions/mnist", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/predictions/mnist"
    await runner.cleanup()


async def test_rest_run_counts_answers_errors_and_wrong_digits(rest_url: str) -> None:
    started = []
    spec = LoadSpec(concurrency=4, seconds=0.5, warmup_requests=8)
    result = await run_rest(
        rest_url, {"Authorization": TOKEN}, PAYLOADS, spec, lambda: started.append(1)
    )
    summary = result.summary()
    assert started == [1]
    done = len(result.latencies_ms)
    assert summary["requests"] == done + result.errors > 20
    # A quarter of the bodies fail, and one answer in three of the rest is the wrong digit.
    assert result.errors == pytest.approx(summary["requests"] / 4, abs=4)
    assert summary["accuracy"] == pytest.approx(2 / 3, abs=0.05)
    assert summary["error_samples"][0].startswith("HTTP 500")
    assert 0 < summary["median_ms"] <= summary["p99_ms"] <= summary["max_ms"]


async def test_rest_run_reports_refused_requests(rest_url: str) -> None:
    result = await run_rest(rest_url, {}, PAYLOADS[:1], LoadSpec(1, 0.2))
    assert result.latencies_ms == [] and result.errors > 0
    assert result.error_samples[0] == "HTTP 400: b'no token'"


class _Servicer(inference_pb2_grpc.InferenceAPIsServiceServicer):
    async def Predictions(self, request, context):
        if ("authorization", TOKEN) not in context.invocation_metadata():
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no token")
        data = request.input["data"]
        if not data.isdigit():
            await context.abort(grpc.StatusCode.INTERNAL, "broken")
        answer = json.dumps({"digit": int(data)}).encode()
        return inference_pb2.PredictionResponse(prediction=answer)


async def test_grpc_run_sends_the_token_and_counts_failed_calls() -> None:
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        target, spec = f"127.0.0.1:{port}", LoadSpec(4, 0.5, warmup_requests=4)
        result = await run_grpc(target, "mnist", [("authorization", TOKEN)], PAYLOADS, spec)
        refused = await run_grpc(target, "mnist", [], PAYLOADS[:1], LoadSpec(1, 0.1))
    finally:
        await server.stop(None)
    assert len(result.latencies_ms) > 10
    assert result.errors == pytest.approx((len(result.latencies_ms) + result.errors) / 4, abs=4)
    assert result.summary()["accuracy"] == pytest.approx(2 / 3, abs=0.05)
    assert result.error_samples[0] == "gRPC INTERNAL: broken"
    assert refused.error_samples[0] == "gRPC PERMISSION_DENIED: no token"
