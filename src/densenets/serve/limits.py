"""What an upload may be: body size, file count, pixels; anything else is refused with a 4xx
that says why (:class:`Refused`), counted by kind in ``/metrics``."""

from __future__ import annotations

import json

from fastapi import HTTPException
from PIL import Image

from ..engine.prediction import UNREADABLE, unreadable_reason


class Refused(Exception):
    """An answer other than 200: status, a kind for the metrics, one line for the client."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers or {}


def decode_upload(decode, name: str, data: bytes, max_pixels: int):
    """``decode(data, max_pixels)``, or :class:`Refused` naming the file and what is wrong with it."""
    if not data:
        raise Refused(400, "empty_file", f"{name}: empty file")
    try:
        return decode(data, max_pixels)
    except Image.DecompressionBombError as exc:
        raise Refused(413, "too_many_pixels", f"{name}: image too large ({exc})") from None
    except UNREADABLE as exc:
        raise Refused(400, "not_an_image", f"{name}: {unreadable_reason(exc)}") from None


class BodyLimit:
    """ASGI middleware: a request body beyond ``max_bytes`` gets 413 before it is read whole
    (from Content-Length when given, else counted as it streams in). ``on_refuse``: called on a
    refusal from Content-Length, which never reaches the app's handlers."""

    def __init__(self, app, max_bytes: int, on_refuse=None) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.on_refuse = on_refuse or (lambda: None)
        self.detail = f"request body beyond the limit of {max_bytes / 2**20:g} MB (--max-body-mb)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            self.on_refuse()
            body = json.dumps({"detail": self.detail}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            return await send({"type": "http.response.body", "body": body})
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # FastAPI passes an HTTPException raised while it reads the body through
                raise HTTPException(413, self.detail)  # counted by the app's HTTPException handler
            return message

        await self.app(scope, counted_receive, send)
