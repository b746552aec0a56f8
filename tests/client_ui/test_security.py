"""AccessGuard alone, on ASGI calls made by hand: what the metrics token opens, and what not.
(tests/client_ui/test_app_process.py checks the same guard in the real app process.)"""

from __future__ import annotations

import asyncio
import base64

import pytest

from client_ui.security import AccessGuard

HOST = "127.0.0.1:8000"
LOGIN = "Basic " + base64.b64encode(b"me:pages").decode()


def answer(token: str, path: str, kind: str = "http", host: str = HOST, **headers: str) -> int:
    """200 when the guard lets the request through to the app, else the status it refused with
    (403 for a websocket it closed)."""
    statuses: list[int] = []

    async def app(scope, receive, send) -> None:
        statuses.append(200)

    async def receive() -> dict:
        return {"type": "http.request"}

    async def send(message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message["type"] == "websocket.close":
            statuses.append(403)

    guard = AccessGuard(app, [HOST], password="pages", metrics_token=token)
    sent = [(b"host", host.encode())]
    sent += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    asyncio.run(guard({"type": kind, "path": path, "headers": sent}, receive, send))
    return statuses[0]


@pytest.mark.parametrize(
    ("token", "path", "kind", "authorization", "expected"),
    [
        ("t0ken", "/metrics", "http", "Bearer t0ken", 200),
        ("t0ken", "/metrics", "http", "bearer  t0ken ", 200),
        ("t0ken", "/metrics", "http", "Bearer guess", 401),
        ("t0ken", "/metrics", "http", LOGIN, 200),
        ("t0ken", "/metrics/", "http", "Bearer t0ken", 401),
        ("t0ken", "/", "http", "Bearer t0ken", 401),
        ("t0ken", "/_nicegui_ws/socket.io/", "websocket", "Bearer t0ken", 403),
        ("", "/metrics", "http", "Bearer ", 401),  # no token set: an empty one opens nothing
        ("", "/metrics", "http", "Bearer", 401),
    ],
)
def test_the_metrics_token_opens_metrics_and_nothing_else(
    token: str, path: str, kind: str, authorization: str, expected: int
) -> None:
    assert answer(token, path, kind, Authorization=authorization) == expected


def test_the_token_still_needs_an_allowed_host_and_origin() -> None:
    token = "Bearer t0ken"
    assert answer("t0ken", "/metrics", Authorization=token, Origin="http://evil.example") == 403
    assert answer("t0ken", "/metrics", host="evil.example", Authorization=token) == 400
