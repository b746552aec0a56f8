"""Who may talk to the app: Host and Origin checks and the optional password, on every request.

An ASGI middleware in front of everything NiceGUI serves, pages and its socket.io endpoint
(`/_nicegui_ws/socket.io/`, polling and websocket) alike. NiceGUI's socket.io server allows
every Origin with credentials; without these checks a page on another site (DNS rebinding) or
any local process could read and change the history.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REALM = "MNIST digits"
#: Headers a request may carry once: with two, the checks and the app could read different ones.
SINGLE_HEADERS = ("host", "origin", "authorization")
METRICS_PATH = "/metrics"


class AccessGuard:
    """Refuses requests whose Host or Origin is not allowed, or without the password if set.

    `/metrics` also takes the metrics token (`Authorization: Bearer`), if set, so Prometheus
    need not hold the password that reads and changes people's drawings."""

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: Iterable[str],
        password: str = "",
        metrics_token: str = "",
    ) -> None:
        self.app = app
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        self.password = password.encode()
        self.metrics_token = metrics_token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        pairs = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in scope.get("headers", [])
        ]
        names = [name for name, _ in pairs]
        if any(names.count(name) > 1 for name in SINGLE_HEADERS):
            problem: tuple[int, str] | None = (400, "repeated Host, Origin or Authorization")
        else:
            problem = self._problem(dict(pairs), scope.get("path", ""))
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, reason = problem
        log.warning("refused %s %r: %s", scope["type"], scope.get("path", ""), reason)
        await _refuse(scope, send, status, reason, challenge=status == 401)

    def _problem(self, headers: dict[str, str], path: str) -> tuple[int, str] | None:
        if headers.get("host", "").lower() not in self.allowed_hosts:
            return 400, "unknown Host"
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin):
            return 403, "foreign Origin"
        authorization = headers.get("authorization", "")
        if path == METRICS_PATH and self._metrics_token_given(authorization):
            return None
        if self.password and not self._authorised(authorization):
            return 401, "login required"
        return None

    def _metrics_token_given(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return (
            bool(self.metrics_token)
            and scheme.lower() == "bearer"
            and hmac.compare_digest(token.strip().encode("latin-1"), self.metrics_token)
        )

    def _origin_allowed(self, origin: str) -> bool:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() in self.allowed_hosts

    def _authorised(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(password, self.password)


async def _refuse(scope: Scope, send: Send, status: int, reason: str, *, challenge: bool) -> None:
    """A short plain answer; a websocket is closed before it is accepted (HTTP 403)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if challenge:
        headers.append((b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": f"{reason}\n".encode()})
