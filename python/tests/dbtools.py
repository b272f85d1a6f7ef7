"""Helpers the integration tests share: engines for every driver and running sync code on them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session, registry

SYNC_DRIVERS = ["psycopg", "psycopg2"]
ASYNC_DRIVERS = ["asyncpg", "psycopg_async"]
DRIVERS = SYNC_DRIVERS + ASYNC_DRIVERS


def table_of(name: str) -> Table:
    return Table(name, MetaData(), Column("id", Integer, primary_key=True), Column("name", Text), Column("note", Text))


def orm_class(name: str) -> type:
    """A fresh mapped class for the table ``name``."""
    cls = type("Row_" + name, (), {"__init__": lambda self, **kw: self.__dict__.update(kw)})
    registry().map_imperatively(cls, table_of(name))
    return cls


def run(url: str, driver: str, work: Callable[[Any], Any], orm: bool = False, **engine_options) -> Any:
    """Runs ``work(connection_or_session)`` in one transaction, through a sync or async engine."""
    if driver in ASYNC_DRIVERS:
        return asyncio.run(_run_async(url, work, orm, **engine_options))
    engine = create_engine(url, **engine_options)
    try:
        if orm:
            with Session(engine) as session, session.begin():
                return work(session)
        with engine.begin() as conn:
            return work(conn)
    finally:
        engine.dispose()


async def _run_async(url: str, work: Callable[[Any], Any], orm: bool, **engine_options) -> Any:
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = create_async_engine(url, **engine_options)
    try:
        if orm:
            async with AsyncSession(engine) as session, session.begin():
                return await session.run_sync(work)
        async with engine.begin() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()
