"""A server that answers every prediction instantly with a fixed JSON, over REST and gRPC.

The benchmark drives it with the same load generator to measure what the generator itself can
do on this machine; run in its own process so its CPU is not counted as the client's.
`python -m serving.bench.baseline_server HTTP_PORT GRPC_PORT`
"""

from __future__ import annotations

import argparse
import asyncio
import json

import grpc
from aiohttp import web

from serving.bench.grpc_api import inference_module

ANSWER = json.dumps(
    {"digit": 0, "confidence": 1.0, "probabilities": [1.0] + [0.0] * 9, "model_version": "0"}
).encode()


async def _predict(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


def _grpc_servicer() -> object:
    messages, services = inference_module()

    class InstantInference(services.InferenceAPIsServiceServicer):
        async def Predictions(self, request: object, context: object) -> object:
            return messages.PredictionResponse(prediction=ANSWER)

    return InstantInference(), services


async def serve(http_port: int, grpc_port: int) -> None:
    """Serve on 127.0.0.1 until killed."""
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/predictions/{model}", _predict)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()

    server = grpc.aio.server()
    servicer, services = _grpc_servicer()
    services.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("http_port", type=int)
    parser.add_argument("grpc_port", type=int)
    args = parser.parse_args()
    asyncio.run(serve(args.http_port, args.grpc_port))


if __name__ == "__main__":
    main()
