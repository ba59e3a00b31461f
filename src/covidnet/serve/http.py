"""The request body limit, in front of KServe's routes (a plain ASGI middleware; no kserve import).

KServe reads a whole request body into memory before the model sees it, and neither KServe nor
uvicorn caps its size. :class:`BodyLimit` answers ``413 Payload Too Large`` (with the limit and
the ``serve.max_body_mb`` key named) before reading a body whose ``Content-Length`` is over the
limit, and refuses a body sent without one (chunked) as soon as it grows past the limit.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: HTTP bodies over ``max_bytes`` get a 413 and never reach the app.

    Args:
        app: the ASGI app (KServe's FastAPI app).
        max_bytes: the largest body accepted.
        key: the params key named in the error (``serve.max_body_mb``).
    """

    def __init__(self, app, max_bytes: int, key: str = "serve.max_body_mb") -> None:
        self.app, self.max_bytes, self.key = app, int(max_bytes), key

    def _message(self, size: str) -> bytes:
        limit = f"{self.max_bytes / 2**20:g} MiB"
        return json.dumps({"error": f"request body {size} is over {self.key} ({limit}); send a study this large "
                                    "as an s3:// reference"}).encode()

    async def _reject(self, send: Send, size: str) -> None:
        body = self._message(size)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None:  # the HTTP parser has checked that it is a number
            if int(declared) > self.max_bytes:
                await self._reject(send, f"of {int(declared)} bytes")
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): take the body in first, counting, and refuse it past the
        # limit; the app then gets the same chunks (not copies), each released as it is handed over.
        chunks, read = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message)
            read += len(message.get("body", b""))
            if read > self.max_bytes:
                await self._reject(send, f"of more than {self.max_bytes} bytes (chunked)")
                return
            if not message.get("more_body", False):
                break
        chunks.reverse()

        async def replay() -> dict:
            return chunks.pop() if chunks else await receive()

        await self.app(scope, replay, send)
