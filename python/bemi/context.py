"""The application context: where it lives, how it is checked and how it is encoded.

The context is kept in a ``contextvars.ContextVar``, so each asyncio task and each thread sees its
own. It is validated and encoded once, when it is set, never per statement.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import decimal
import enum
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

DEFAULT_MAX_CONTEXT_SIZE = 1024 * 1024  # the extension's default bemi.max_context_size
RESERVED_KEY = "_bemi"  # the extension adds {"role": ..., "application_name": ...} under it

# PostgreSQL's jsonb cannot hold U+0000 nor unpaired UTF-16 surrogates; both are replaced.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class BemiContextError(ValueError):
    """The context is not something the extension can accept (not an object, not JSON, reserved key)."""


class BemiContextTooLarge(BemiContextError):
    """The encoded context is larger than ``Bemi.max_context_size``; nothing was sent."""


class EncodedContext:
    """A validated context and its JSON text, ready to travel in a comment or as a parameter.

    ``json`` is printable ASCII in which ``*``, ``/`` and ``%`` only appear as ``\\u`` escapes, so
    inside a SQL comment it can neither open nor close one, nor look like a driver's placeholder.
    """

    __slots__ = ("value", "json")

    def __init__(self, value: dict[str, Any], json_text: str):
        self.value = value
        self.json = json_text

    def with_sql(self, statement: str) -> EncodedContext:
        """The same context plus the statement's text under "SQL", as bemi-sqlalchemy sends it."""
        return encode({**self.value, "SQL": statement})

    def __repr__(self) -> str:
        return f"EncodedContext({self.json})"


class _Scope:
    """A mutable holder for the context of one unit of work (an HTTP request, a ``bemi.context``).

    An integration puts the request's holder in both ``_current`` and ``_request``. Copies of a
    ``contextvars.Context`` share the holder, so ``Bemi.set_context`` called in a sync FastAPI
    dependency (run in a worker thread with a copied context) still reaches the endpoint.
    """

    __slots__ = ("encoded",)

    def __init__(self, encoded: EncodedContext | None):
        self.encoded = encoded


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("bemi_context", default=None)
_request: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("bemi_request", default=None)


def _clean(value: Any, path: str, depth: int) -> Any:
    """Returns ``value`` as plain JSON data, or raises ``BemiContextError`` naming the bad part."""
    if depth > 100:
        raise BemiContextError(f"bemi context is nested more than 100 levels deep at {path}")
    if value is None or isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise BemiContextError(f"bemi context value at {path} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, enum.Enum):
        return _clean(value.value, path, depth)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, Mapping):
        cleaned = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise BemiContextError(f"bemi context keys must be strings, got {key!r} at {path}")
            cleaned[_UNSTORABLE.sub("\ufffd", key)] = _clean(item, f"{path}.{key}", depth + 1)
        return cleaned
    if isinstance(value, (list, tuple)):
        return [_clean(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise BemiContextError(
        f"bemi context value at {path} is a {type(value).__name__}, which is not JSON; "
        "pass str, int, float, bool, None, dict or list"
    )


def encode(context: Mapping[str, Any]) -> EncodedContext:
    """Validates ``context`` and encodes it once; raises before anything could be sent."""
    if not isinstance(context, Mapping):
        raise BemiContextError(f"bemi context must be a dict (a JSON object), got {type(context).__name__}")
    if RESERVED_KEY in context:
        raise BemiContextError(f'the key "{RESERVED_KEY}" is reserved for the extension')
    value = _clean(context, "context", 0)
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    # '*', '/' and '%' only occur inside JSON strings, where their \u escapes mean the same thing:
    # no comment can open or close, and no driver sees a '%s' placeholder in the statement.
    text = text.replace("*", "\\u002a").replace("/", "\\u002f").replace("%", "\\u0025")
    limit = Bemi.max_context_size
    if len(text) > limit:
        raise BemiContextTooLarge(
            f"bemi context is {len(text)} bytes once encoded as JSON, over the limit of {limit} "
            "bytes (Bemi.max_context_size, which mirrors the server's bemi.max_context_size); "
            "store large data in a table and put its id in the context"
        )
    return EncodedContext(value, text)


def current() -> EncodedContext | None:
    """The encoded context in force in this task or thread, or None."""
    scope = _current.get()
    return scope.encoded if scope is not None else None


class Bemi:
    """Settings and the context API, in the shape bemi-sqlalchemy users know (``Bemi.set_context``).

    transport: "auto" (the default: a comment for psycopg and psycopg2, bemi_set_context() at
    transaction start for asyncpg), "comment" or "set_context". See README.md for the measurements.
    include_sql: add each write statement's SQL text to its context under "SQL".
    max_context_size: the largest encoded context, in bytes, accepted before anything is sent.
    """

    transport: str = "auto"
    include_sql: bool = False
    max_context_size: int = DEFAULT_MAX_CONTEXT_SIZE

    @staticmethod
    def set_context(context: Mapping[str, Any] | None) -> None:
        """Sets the context for the rest of the current request, task or thread; None clears it."""
        encoded = encode(context) if context is not None else None
        scope = _current.get()
        if scope is not None and scope is _request.get():
            scope.encoded = encoded  # seen by the request's own code, whichever thread set it
        _current.set(_Scope(encoded))  # and this task or thread keeps its own, unaffected by siblings

    @staticmethod
    def get_context() -> dict[str, Any] | None:
        """The context in force (as validated), or None."""
        encoded = current()
        return dict(encoded.value) if encoded is not None else None

    @staticmethod
    @contextlib.contextmanager
    def context(context: Mapping[str, Any] | None = None, **values: Any) -> Iterator[None]:
        """Adds ``context`` on top of the context in force for the duration of a ``with`` block.

        Keys given here override the outer ones; the outer context is back when the block ends.
        """
        outer = current()
        merged = {**(outer.value if outer is not None else {}), **(context or {}), **values}
        token = _current.set(_Scope(encode(merged)))
        try:
            yield
        finally:
            _current.reset(token)


@contextlib.contextmanager
def request_scope(context: Mapping[str, Any] | None) -> Iterator[None]:
    """A fresh scope for one request: integrations use it so nothing leaks between requests."""
    scope = _Scope(encode(context) if context is not None else None)
    token, request_token = _current.set(scope), _request.set(scope)
    try:
        yield
    finally:
        _request.reset(request_token)
        _current.reset(token)


context = Bemi.context
set_context = Bemi.set_context
get_context = Bemi.get_context
