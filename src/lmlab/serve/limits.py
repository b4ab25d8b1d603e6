"""Two pure ASGI middlewares: a cap on request bodies, and the request counter behind /metrics.

Pure ASGI (not Starlette's BaseHTTPMiddleware) so that streamed responses and
client disconnects pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any

ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/playground/next"}


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """413 for a body over `limit` bytes, whether it says its length up front or streams it in chunks."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def _error(self) -> dict:
        return {"error": {"message": f"the request body is larger than {self.limit} bytes",
                          "type": "invalid_request_error", "param": None, "code": "body_too_large"}}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _send_json(send, 413, self._error())
        # Read the whole body first (this API's bodies are small JSON), so an oversized one is refused before
        # the app sees any of it; then replay it, and pass later messages (a disconnect) through.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await _send_json(send, 413, self._error())
            if not message.get("more_body", False):
                break
        body = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)


class RequestCounter:
    """Counts answered requests by route (unknown paths as 'other') and status."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope.get("path", "") if scope.get("path") in ROUTES else "other"
        status = [500]

        async def watched_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            self.metrics.requests.labels(route=route, status=str(status[0])).inc()
