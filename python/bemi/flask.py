"""Flask extension giving each request its context."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bemi.context import request_scope

_TOKEN = "_bemi_context_token"


class BemiFlask:
    """Calls ``set_context(flask.request)`` before each request; the context ends with the request.

        BemiFlask(app, set_context=lambda request: {"user_id": ..., "endpoint": request.path})

    or, with an application factory, ``bemi_flask = BemiFlask(set_context=...)`` then
    ``bemi_flask.init_app(app)``.
    """

    def __init__(self, app: Any = None, set_context: Callable[[Any], Mapping[str, Any] | None] | None = None):
        self.set_context = set_context
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        app.before_request(self._before_request)
        app.teardown_request(self._teardown_request)
        app.extensions["bemi"] = self

    def _before_request(self) -> None:
        from flask import g, request

        context = self.set_context(request) if self.set_context is not None else None
        scope = request_scope(context)
        scope.__enter__()
        setattr(g, _TOKEN, scope)

    def _teardown_request(self, exc: BaseException | None) -> None:
        from flask import g

        scope = g.pop(_TOKEN, None)
        if scope is not None:
            scope.__exit__(None, None, None)
