"""The app's middlewares, pure ASGI (nothing buffered): ``nosniff`` on every response, and the
request body's size limit."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from camlens.serve.errors import error_response, upload_stalled


class NoSniff:
    """Adds ``X-Content-Type-Options: nosniff`` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-content-type-options", b"nosniff"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_header)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with a 413 naming the limit: at once when the
    Content-Length says so (nothing is read), else as soon as the bytes received pass it; and a
    body that stalls (no byte for ``stall`` seconds) with a 408, so that slow or stuck uploads
    do not hold the server's memory."""

    def __init__(self, app: ASGIApp, limit: int, message: str, stall: float = 30.0) -> None:
        self.app = app
        self.limit = limit
        self.message = message
        self.stall = stall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await error_response(413, self.message, "image", Connection="close")(
                scope, receive, send
            )
            return
        received = 0
        over = started = False
        refusal = (413, self.message)

        async def counting_receive() -> Message:
            nonlocal received, over, refusal
            try:
                message = await asyncio.wait_for(receive(), self.stall)
            except TimeoutError:
                over = True
                refusal = (408, upload_stalled(self.stall))
                raise _TooLarge from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a cut-off body (a 400, say): the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            status, message = refusal
            await error_response(status, message, "image", Connection="close")(scope, receive, send)
