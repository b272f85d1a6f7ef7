"""A read-only SQLAlchemy model for ``bemi.changes`` and a model instance's history."""

from __future__ import annotations

import datetime
import decimal
import json
from typing import Any

from sqlalchemy import BigInteger, DateTime, Select, String, Text, event, inspect, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class BemiReadOnlyError(RuntimeError):
    """bemi.changes is written by the extension only."""


class BemiBase(DeclarativeBase):
    """Its own metadata, so the application's ``create_all`` and Alembic autogenerate ignore it."""


class BemiChange(BemiBase):
    """One row change recorded by the extension. Read-only: flushing one raises BemiReadOnlyError."""

    __tablename__ = "changes"
    __table_args__ = {"schema": "bemi"}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    primary_key: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any]] = mapped_column(JSONB)
    after: Mapped[dict[str, Any]] = mapped_column(JSONB)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    database: Mapped[str] = mapped_column(Text)
    schema: Mapped[str] = mapped_column(Text)
    table: Mapped[str] = mapped_column(Text)
    operation: Mapped[str] = mapped_column(Text)  # CREATE, UPDATE, DELETE, TRUNCATE; DDL, SNAPSHOT (0.5.0)
    committed_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
    transaction_id: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[str] = mapped_column(String)  # pg_lsn, e.g. '0/16B3748'
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))

    def __repr__(self) -> str:
        return f"<BemiChange {self.id} {self.operation} {self.schema}.{self.table} {self.primary_key}>"


def _refuse_write(mapper: Any, connection: Any, target: BemiChange) -> None:
    raise BemiReadOnlyError("bemi.changes is read-only: rows are written by the bemi extension")


for _name in ("before_insert", "before_update", "before_delete"):
    event.listen(BemiChange, _name, _refuse_write)


def _key_json(value: Any) -> str:
    """A key value as to_jsonb() renders it."""
    if isinstance(value, (datetime.date, datetime.time)):
        value = value.isoformat()
    elif isinstance(value, (bool, int, float, str)) or value is None:
        pass
    elif isinstance(value, decimal.Decimal):
        return str(value)
    else:
        value = str(value)
    return json.dumps(value, ensure_ascii=False)


def primary_key_text(instance: Any) -> str:
    """The instance's primary key as bemi.changes stores it: the value's text for a one-column key
    (``42``, ``abc``), a JSON-like list for a composite one (``[42, "abc"]``)."""
    identity = inspect(instance).identity or tuple(
        getattr(instance, column.key) for column in inspect(type(instance)).primary_key
    )
    if len(identity) == 1:
        rendered = _key_json(identity[0])
        return json.loads(rendered) if rendered.startswith('"') else rendered
    return "[" + ", ".join(_key_json(value) for value in identity) + "]"


def history_query(instance: Any) -> Select[tuple[BemiChange]]:
    """A SELECT of the instance's changes, newest first; run it with a sync or async session."""
    table = inspect(type(instance)).local_table
    query = select(BemiChange).where(
        BemiChange.table == table.name,
        BemiChange.primary_key == primary_key_text(instance),
    )
    if table.schema is not None:
        query = query.where(BemiChange.schema == table.schema)
    return query.order_by(BemiChange.committed_at.desc(), BemiChange.id.desc())


def history(session: Session, instance: Any) -> list[BemiChange]:
    """The instance's changes, newest first."""
    return list(session.scalars(history_query(instance)))
