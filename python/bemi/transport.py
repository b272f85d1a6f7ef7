"""Carries the context from Python to the extension with every write SQLAlchemy sends.

Two ways, chosen per statement (see README.md, "How the context travels", for the measurements):

- comment: ``/*Bemi {json} Bemi*/`` put in front of the write statement (in front, so that it stays
  part of the statement even if the statement ends with ';'). No extra round trip, no state
  left in the session, but every context makes a new statement text, which defeats prepared
  statement caches (asyncpg prepares every statement; psycopg 3 auto-prepares repeated ones).
- set_context: ``SELECT bemi_set_context($1)`` once per transaction (and again if the context
  changes), before its first write. One extra round trip per writing transaction; statement texts
  stay constant, so prepared statements keep working. Transaction-local, so safe behind PgBouncer.

The listeners are registered on the ``Engine`` class, so every PostgreSQL engine, sync or async,
created before or after ``import bemi``, is covered.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from bemi.context import Bemi, EncodedContext, current

# A write statement, possibly after comments, whitespace or an opening parenthesis.
_WRITE = re.compile(
    r"^(?:\s+|/\*.*?\*/|--[^\n]*(?:\n|$)|\()*(?:INSERT|UPDATE|DELETE|MERGE|WITH|COPY|TRUNCATE)\b",
    re.IGNORECASE | re.DOTALL,
)

_SENT = "bemi_sent"  # conn.info key: the context text already set in the current transaction
_FUNCTION = "bemi_set_context_function"  # conn.info key: qualified function name, or "" if absent

_PLACEHOLDERS = {
    "pyformat": "%(context)s",
    "format": "%s",
    "numeric_dollar": "$1",
    "numeric": ":1",
    "named": ":context",
    "qmark": "?",
}

_FIND_FUNCTION = (
    "SELECT quote_ident(n.nspname) FROM pg_catalog.pg_proc p "
    "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
    "WHERE p.proname = 'bemi_set_context' ORDER BY n.nspname = 'public' DESC LIMIT 1"
)


def is_write(statement: str) -> bool:
    """Whether a statement may change rows, judged by its first keyword."""
    return _WRITE.match(statement) is not None


def comment_for(encoded: EncodedContext) -> str:
    """The comment the extension reads; ``encoded.json`` holds no '*' so it cannot end early."""
    return f"/*Bemi {encoded.json} Bemi*/ "


def _choose_transport(conn: Connection, dbapi_connection: Any) -> str:
    """'comment' or 'set_context' for this statement, following ``Bemi.transport``."""
    if conn._is_autocommit_isolation() or getattr(dbapi_connection, "autocommit", False):
        return "comment"  # no transaction for a transaction-local context to live in
    if Bemi.transport == "auto":
        return "set_context" if conn.dialect.driver == "asyncpg" else "comment"
    if Bemi.transport not in ("comment", "set_context"):
        raise ValueError(f'Bemi.transport must be "auto", "comment" or "set_context", not {Bemi.transport!r}')
    return Bemi.transport


def _run(dbapi_connection: Any, paramstyle: str, sql: str, parameter: str | None = None) -> list:
    """Runs one statement on its own cursor, outside SQLAlchemy's events."""
    cursor = dbapi_connection.cursor()
    try:
        if parameter is None:
            cursor.execute(sql)
        elif paramstyle in ("pyformat", "named"):
            cursor.execute(sql, {"context": parameter})
        else:
            cursor.execute(sql, (parameter,))
        return cursor.fetchall() if cursor.description else []
    finally:
        cursor.close()


def _set_context_function(conn: Connection, dbapi_connection: Any) -> str:
    """The schema-qualified bemi_set_context, looked up once per database connection ("" if absent)."""
    info = conn.connection.info
    if _FUNCTION not in info:
        rows = _run(dbapi_connection, conn.dialect.paramstyle, _FIND_FUNCTION)
        info[_FUNCTION] = f"{rows[0][0]}.bemi_set_context" if rows else ""
    return info[_FUNCTION]


def _send_set_context(conn: Connection, dbapi_connection: Any, encoded: EncodedContext) -> bool:
    """Sets the context for the current transaction unless already set; False if the function is absent."""
    info = conn.connection.info
    if info.get(_SENT) == encoded.json:
        return True
    function = _set_context_function(conn, dbapi_connection)
    if not function:
        return False
    paramstyle = conn.dialect.paramstyle
    placeholder = _PLACEHOLDERS[paramstyle]
    _run(dbapi_connection, paramstyle, f"SELECT {function}(CAST({placeholder} AS jsonb))", encoded.json)
    info[_SENT] = encoded.json
    return True


def _clear_context(conn: Connection) -> None:
    """Clears a context set earlier in the current transaction, so later writes carry none."""
    dbapi_connection = conn.connection.dbapi_connection
    _run(dbapi_connection, conn.dialect.paramstyle, f"SELECT {_set_context_function(conn, dbapi_connection)}(NULL)")
    conn.connection.info.pop(_SENT, None)


@event.listens_for(Engine, "before_cursor_execute", retval=True)
def _before_cursor_execute(conn, cursor, statement, parameters, context, executemany):
    encoded = current()
    if conn.dialect.name != "postgresql" or not is_write(statement):
        return statement, parameters
    if encoded is None:
        if conn.connection.info.get(_SENT) is not None:
            _clear_context(conn)  # the context was cleared after this transaction's first writes
        return statement, parameters
    if Bemi.include_sql:
        encoded = encoded.with_sql(statement)
    dbapi_connection = conn.connection.dbapi_connection
    if _choose_transport(conn, dbapi_connection) == "set_context":
        if _send_set_context(conn, dbapi_connection, encoded):
            return statement, parameters
    return comment_for(encoded) + statement, parameters


@event.listens_for(Engine, "begin")
def _on_begin(conn):
    # A new transaction starts with no context set in the server.
    conn.connection.info.pop(_SENT, None)


@event.listens_for(Engine, "rollback_savepoint")
def _on_rollback_savepoint(conn, name, context):
    # A context set inside the savepoint may be undone with it: set it again before the next write.
    conn.connection.info.pop(_SENT, None)
