"""ASGI middleware (FastAPI, Starlette or any ASGI app) giving each HTTP request its context."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Union

from bemi.context import request_scope

ContextFactory = Callable[[Any], Union[Mapping[str, Any], None, Awaitable[Union[Mapping[str, Any], None]]]]


class BemiASGIMiddleware:
    """Calls ``set_context(request)`` at the start of each request and keeps the result in force
    for everything the request does, including sync endpoints and dependencies run in threads.

    ``set_context`` receives a ``starlette.requests.Request`` (the body is not read) and returns a
    dict, or None for no context; it may be a coroutine function.

        app.add_middleware(BemiFastAPIMiddleware, set_context=lambda request: {
            "user_id": current_user(request), "endpoint": request.url.path, "method": request.method})
    """

    def __init__(self, app: Any, set_context: ContextFactory | None = None):
        self.app = app
        self.set_context = set_context

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        context = None
        if self.set_context is not None:
            from starlette.requests import HTTPConnection, Request

            request = Request(scope) if scope["type"] == "http" else HTTPConnection(scope)
            context = self.set_context(request)
            if inspect.isawaitable(context):
                context = await context
        with request_scope(context):
            await self.app(scope, receive, send)


BemiFastAPIMiddleware = BemiASGIMiddleware
BemiStarletteMiddleware = BemiASGIMiddleware
