"""Python client for the project's TorchServe: REST (requests) and gRPC, with token handling.

``python -m serving.client predict IMAGE [--grpc] | health | info | metrics``

Tokens come from TorchServe's ``key_file.json``. When TorchServe refuses a token, the client
first re-reads the key file (the server may have been restarted), then asks the management API
for a fresh key with the API key, and retries once. Idempotent calls (health, model info,
metrics) are retried on connection failures and 502-504, never after waiting out the timeout.
A prediction is idempotent too (the same input gives the same answer and changes nothing on
the server), so one that died with its worker ("Worker died.": REST 507 or 500, gRPC
RESOURCE_EXHAUSTED or INTERNAL) is sent once more while TorchServe restarts the worker; other
failures after sending are not retried, so an overloaded server is not asked twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from prometheus_client.parser import text_string_to_metric_families
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from config import Settings, get_settings

DEFAULT_RETRIES = 2
# One more try: the other workers answer it while the dead one restarts. An input that kills
# the second worker too is the likely cause, and each further try would kill one more.
PREDICTION_RETRIES = 1
PREDICTION_BACKOFF_S = 0.25
# TorchServe's message for every request of a batch whose worker died (REST and gRPC alike).
WORKER_DIED_MESSAGE = "Worker died."
# TorchServe answers a missing, wrong or expired token with 400 and this exception type.
TOKEN_ERROR_TYPE = "InvalidKeyException"
GRPC_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
T = TypeVar("T")


def metric_totals(text: str) -> dict[str, float]:
    """Each sample name of Prometheus text with its value summed over all label sets."""
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return dict(totals)


# TorchServe's limit on a request body (max_request_size in config.properties). Anything
# bigger could never be answered; over gRPC TorchServe would just cancel the call, so the
# client refuses it itself, the same way for both protocols.
MAX_REQUEST_BYTES = 3 * 1024 * 1024


class TorchServeError(Exception):
    """Any failure talking to TorchServe."""


class ServerUnavailableError(TorchServeError):
    """TorchServe is down, too slow, or failed with a 5xx."""


class WorkerDiedError(ServerUnavailableError):
    """The worker running the request died, and it kept happening on every retry."""


class ServerUnhealthyError(ServerUnavailableError):
    """TorchServe answered its ping, with a 500 and ``{"status": "Unhealthy"}``: it runs, but
    no worker of the model is healthy."""


class InputRejectedError(TorchServeError):
    """The request was refused (4xx): `status` and the server's `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class AuthorizationError(TorchServeError):
    """TorchServe refused the token even after re-reading the key file and asking for a new one."""


class _TokenRefused(Exception):
    """Internal: the server refused the token of `purpose`."""


class TokenStore:
    """The keys in TorchServe's key file, read lazily and refreshed on demand."""

    def __init__(self, key_file: Path, management_url: str, timeout_s: float) -> None:
        self.key_file = key_file
        self.management_url = management_url
        self.timeout_s = timeout_s
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def key(self, purpose: str) -> str | None:
        """The current key for "inference" or "management" (None when there is no key file)."""
        if purpose not in self._keys:
            self.reload()
        return self._keys.get(purpose)

    def reload(self) -> bool:
        """Re-read the key file; True when it gave keys different from the ones held."""
        try:
            document = json.loads(self.key_file.read_text())
        except (OSError, ValueError):
            return False
        keys = {purpose: entry["key"] for purpose, entry in document.items() if "key" in entry}
        changed = keys != self._keys
        self._keys = keys
        return changed

    def replacement(
        self, session: requests.Session, purpose: str, refused: str | None
    ) -> str | None:
        """A key to try instead of `refused`: one another thread already got, the key file's,
        or a new one from the API. None when there is none. One thread renews at a time, so a
        burst of refused requests asks for one new key, not one each."""
        with self._lock:
            if self._held_instead_of(purpose, refused):
                return self._keys[purpose]
            self.reload()
            if self._held_instead_of(purpose, refused):
                return self._keys[purpose]
            self.renew(session, purpose)
            if self._held_instead_of(purpose, refused):
                return self._keys[purpose]
        return None

    def _held_instead_of(self, purpose: str, refused: str | None) -> bool:
        return self._keys.get(purpose) not in (None, "", refused)

    def renew(self, session: requests.Session, purpose: str) -> bool:
        """Ask TorchServe for a new `purpose` key with the API key; True when one came back."""
        api_key = self._keys.get("API")
        if not api_key:
            return False
        try:
            response = session.post(
                f"{self.management_url}/token",
                params={"type": purpose},
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=self.timeout_s,
            )
        except requests.RequestException:
            return False
        if response.status_code != 200:
            return False
        try:
            key = response.json()[purpose]["key"]
        except (ValueError, KeyError, TypeError):
            return self.reload()
        self._keys[purpose] = key
        return True


class TorchServeClient:
    """Talks to one TorchServe; built from `Settings` or explicit keyword overrides."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        inference_url: str | None = None,
        management_url: str | None = None,
        metrics_url: str | None = None,
        grpc_target: str | None = None,
        key_file: Path | str | None = None,
        model_name: str | None = None,
        timeout_s: float | None = None,
        retries: int = DEFAULT_RETRIES,
        prediction_retries: int = PREDICTION_RETRIES,
    ) -> None:
        settings = settings or get_settings()
        self.inference_url = (inference_url or settings.inference_url).rstrip("/")
        self.management_url = (management_url or settings.management_url).rstrip("/")
        self.metrics_url = (metrics_url or settings.metrics_url).rstrip("/")
        self.grpc_target = grpc_target or settings.grpc_target
        self.model_name = model_name or settings.model_name
        self.timeout_s = timeout_s if timeout_s is not None else settings.request_timeout_s
        self.tokens = TokenStore(
            Path(key_file or settings.key_file), self.management_url, self.timeout_s
        )
        self.session = _session(retries)
        self.prediction_retries = prediction_retries
        self._grpc_channel: Any = None
        self._grpc_stub: Any = None
        self._grpc_lock = threading.Lock()

    def predict(
        self, image_bytes: bytes, *, use_grpc: bool = False, version: str | None = None
    ) -> dict[str, Any]:
        """The handler's answer for one encoded image (or JSON body) as a dict, from the
        model's default version or from `version`; ``model_version`` names the one that gave it."""
        if len(image_bytes) > MAX_REQUEST_BYTES:
            raise InputRejectedError(
                413,
                f"the body is {len(image_bytes)} bytes; TorchServe accepts at most "
                f"{MAX_REQUEST_BYTES}",
            )
        attempt = 0
        while True:
            try:
                return self._predict_once(image_bytes, use_grpc, version)
            except WorkerDiedError:
                if attempt >= self.prediction_retries:
                    raise
                time.sleep(PREDICTION_BACKOFF_S * 2**attempt)
                attempt += 1

    def _predict_once(
        self, image_bytes: bytes, use_grpc: bool, version: str | None
    ) -> dict[str, Any]:
        if use_grpc:
            return self._with_token(
                "inference", lambda key: self._grpc_predict(image_bytes, key, version)
            )
        url = f"{self.inference_url}/predictions/{self.model_name}"
        if version:
            url += f"/{quote(version, safe='')}"
        headers = {"Content-Type": "application/octet-stream"}
        return self._with_token(
            "inference", lambda key: self._rest("POST", url, key, data=image_bytes, headers=headers)
        )

    def explain(self, image_bytes: bytes) -> dict[str, Any]:
        """Why the model chose its digit: a 28x28 ``attributions`` map. REST only: the
        project's gRPC contract has only Ping and Predictions. Never retried, like a prediction."""
        if len(image_bytes) > MAX_REQUEST_BYTES:
            raise InputRejectedError(
                413, f"the body is {len(image_bytes)} bytes; the limit is {MAX_REQUEST_BYTES}"
            )
        url = f"{self.inference_url}/explanations/{self.model_name}"
        headers = {"Content-Type": "application/octet-stream"}
        return self._with_token(
            "inference", lambda key: self._rest("POST", url, key, data=image_bytes, headers=headers)
        )

    def health(self) -> dict[str, Any]:
        """TorchServe's ping answer, e.g. ``{"status": "Healthy"}``."""
        url = f"{self.inference_url}/ping"
        return self._with_token("inference", lambda key: self._rest("GET", url, key))

    def model_info(self) -> dict[str, Any]:
        """The management API's description of the model, plus ``version`` for convenience."""
        url = f"{self.management_url}/models/{self.model_name}"
        described = self._with_token("management", lambda key: self._rest("GET", url, key))
        info = described[0] if isinstance(described, list) and described else described
        return {**info, "version": info.get("modelVersion")}

    def versions(self) -> list[dict[str, Any]]:
        """Every version TorchServe serves of the model, as the management API describes them."""
        url = f"{self.management_url}/models/{self.model_name}/all"
        return self._with_token("management", lambda key: self._rest("GET", url, key))

    def set_default(self, version: str) -> None:
        """Make `version` the one that answers ``/predictions/<model>`` (management API)."""
        url = (
            f"{self.management_url}/models/{self.model_name}/{quote(version, safe='')}/set-default"
        )
        self._with_token("management", lambda key: self._rest("PUT", url, key))

    def metrics(self) -> str:
        """Prometheus text from the metrics port (which needs no token)."""
        response = self._send("GET", f"{self.metrics_url}/metrics")
        if response.status_code != 200:
            raise _error_from_response(response)
        return response.text

    def close(self) -> None:
        self.session.close()
        if self._grpc_channel is not None:
            self._grpc_channel.close()
            self._grpc_channel = self._grpc_stub = None

    def __enter__(self) -> TorchServeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _with_token(self, purpose: str, call: Callable[[str | None], T]) -> T:
        """Run `call` with the key; when refused, with a re-read or renewed key (twice at most)."""
        key = self.tokens.key(purpose)
        for _attempt in range(3):
            try:
                return call(key)
            except _TokenRefused:
                key = self.tokens.replacement(self.session, purpose, refused=key)
            if key is None:
                break
        raise AuthorizationError(
            f"TorchServe refused the {purpose} token from {self.tokens.key_file}, "
            "and no fresh one could be had with the API key"
        )

    def _rest(self, method: str, url: str, key: str | None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if key:
            headers["Authorization"] = f"Bearer {key}"
        response = self._send(method, url, headers=headers, **kwargs)
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError as error:
                raise TorchServeError(
                    f"{url} answered with non-JSON: {response.text[:200]}"
                ) from error
        if _is_token_refusal(response):
            raise _TokenRefused
        raise _error_from_response(response)

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.Timeout as error:
            raise ServerUnavailableError(
                f"TorchServe did not answer within {self.timeout_s} s"
            ) from error
        except requests.RequestException as error:
            raise ServerUnavailableError(
                f"cannot reach TorchServe at {url} ({type(error).__name__}); "
                "is it running (`make serve`)?"
            ) from error

    def _grpc_predict(
        self, image_bytes: bytes, key: str | None, version: str | None = None
    ) -> dict[str, Any]:
        import grpc

        from serving.grpc_stubs import inference_pb2

        request = inference_pb2.PredictionsRequest(
            model_name=self.model_name, model_version=version or "", input={"data": image_bytes}
        )
        metadata = [("authorization", f"Bearer {key}")] if key else []
        try:
            response = self._stub().Predictions(request, metadata=metadata, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise _error_from_grpc(error) from error
        answer = json.loads(response.prediction)
        # TorchServe 0.12 sends a handler's per-request 4xx over gRPC as a normal answer.
        if (
            isinstance(answer, dict)
            and isinstance(answer.get("code"), int)
            and answer["code"] >= 400
        ):
            raise InputRejectedError(answer["code"], str(answer.get("message", answer)))
        return answer

    def _stub(self) -> Any:
        """One channel per client, opened on first use (it reconnects by itself)."""
        with self._grpc_lock:
            return self._grpc_stub or self._open_grpc()

    def _open_grpc(self) -> Any:
        import grpc

        from serving.grpc_stubs import inference_pb2_grpc

        options = [
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
        ]
        self._grpc_channel = grpc.insecure_channel(self.grpc_target, options=options)
        self._grpc_stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._grpc_channel)
        return self._grpc_stub


class _RetryUnlessTimedOut(Retry):
    """urllib3's retries, except for a read that waited out its timeout: a connection cut by a
    restart is worth another try, a server that did not answer in time is not."""

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        error = kwargs.get("error")
        if isinstance(error, ReadTimeoutError):
            raise error
        return super().increment(*args, **kwargs)


def _session(retries: int) -> requests.Session:
    """A pooled session; GETs retry on connection failures and 502-504, POSTs only on connect.
    Neither retries a read that timed out: each call waits at most its timeout for an answer."""
    retry = _RetryUnlessTimedOut(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=0.2,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=32)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _json_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _is_token_refusal(response: requests.Response) -> bool:
    return (
        response.status_code in (400, 401) and _json_body(response).get("type") == TOKEN_ERROR_TYPE
    )


def _error_from_response(response: requests.Response) -> TorchServeError:
    body = _json_body(response)
    message = str(body.get("message") or response.text.strip() or response.reason)
    if 400 <= response.status_code < 500:
        return InputRejectedError(response.status_code, message)
    if response.status_code == 500 and body.get("status") == "Unhealthy":
        return ServerUnhealthyError("TorchServe answered 500: Unhealthy")
    if response.status_code in (500, 507) and message.startswith(WORKER_DIED_MESSAGE):
        return WorkerDiedError(f"TorchServe answered {response.status_code}: {message}")
    return ServerUnavailableError(f"TorchServe answered {response.status_code}: {message}")


def _error_from_grpc(error: Any) -> Exception:
    import grpc

    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return _TokenRefused()
    try:
        message = str(json.loads(details).get("message", details))
    except (ValueError, AttributeError):
        message = details
    rejections = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.OUT_OF_RANGE: 413,
    }
    if code in rejections:
        return InputRejectedError(rejections[code], message)
    died = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
    if code in died and message.startswith(WORKER_DIED_MESSAGE):
        return WorkerDiedError(f"gRPC {code.name}: {message}")
    return ServerUnavailableError(f"gRPC {code.name}: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Call the project's TorchServe.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify an image file; prints JSON")
    predict.add_argument("image", type=Path)
    predict.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    commands.add_parser("health", help="ping the server; prints JSON")
    commands.add_parser("info", help="describe the model; prints JSON")
    commands.add_parser("metrics", help="print the Prometheus metrics")
    args = parser.parse_args(argv)
    image = None
    if args.command == "predict":
        try:
            image = args.image.read_bytes()
        except OSError as error:
            print(f"error: cannot read {args.image}: {error.strerror}", file=sys.stderr)
            return 1
    try:
        with TorchServeClient() as client:
            if image is not None:
                print(json.dumps(client.predict(image, use_grpc=args.grpc)))
            elif args.command == "health":
                print(json.dumps(client.health()))
            elif args.command == "info":
                print(json.dumps(client.model_info(), indent=2))
            else:
                print(client.metrics(), end="")
    except TorchServeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
