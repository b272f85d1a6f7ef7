"""Alembic helpers: enable the extension in a migration, and full replica identity for tables.

    from bemi.alembic import enable_bemi, disable_bemi

    def upgrade():
        enable_bemi(tables=["todo"])      # CREATE EXTENSION IF NOT EXISTS bemi + REPLICA IDENTITY FULL

    def downgrade():
        disable_bemi()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _op(op: Any) -> Any:
    if op is not None:
        return op
    from alembic import op as alembic_op

    return alembic_op


def _qualified(op: Any, table: Any) -> str:
    """A quoted table name from a name ("todo", "app.todo") or a SQLAlchemy Table."""
    quote = op.get_bind().dialect.identifier_preparer.quote
    if hasattr(table, "name") and hasattr(table, "schema"):
        schema, name = table.schema, table.name
    else:
        schema, _, name = str(table).rpartition(".")
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def set_replica_identity_full(tables: Iterable[Any], op: Any = None) -> None:
    """``ALTER TABLE … REPLICA IDENTITY FULL``, so updates and deletes carry the whole old row."""
    op = _op(op)
    for table in tables:
        op.execute(f"ALTER TABLE {_qualified(op, table)} REPLICA IDENTITY FULL")


def enable_bemi(tables: Iterable[Any] = (), schema: str | None = None, op: Any = None) -> None:
    """Creates the extension (if absent), then sets full replica identity on ``tables``."""
    op = _op(op)
    sql = "CREATE EXTENSION IF NOT EXISTS bemi"
    if schema is not None:
        sql += f" SCHEMA {op.get_bind().dialect.identifier_preparer.quote(schema)}"
    op.execute(sql)
    set_replica_identity_full(tables, op)


def disable_bemi(op: Any = None, drop_trail: bool = False) -> None:
    """Drops the extension; bemi.changes goes with it.

    bemi refuses to drop a trail that holds changes unless the session says it means it: pass
    ``drop_trail=True`` (runs ``SET LOCAL bemi.allow_drop = on`` first; superuser only).
    """
    op = _op(op)
    if drop_trail:
        op.execute("SET LOCAL bemi.allow_drop = on")
    op.execute("DROP EXTENSION IF EXISTS bemi")
