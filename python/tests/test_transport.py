"""The context reaches bemi.changes from every driver, sync and async, ORM and Core, both transports."""

from __future__ import annotations

import pytest
from sqlalchemy import event, insert, text, update
from sqlalchemy.engine import Engine

import bemi
from bemi import Bemi, BemiContextTooLarge
from conftest import app_context, changes
from dbtools import DRIVERS, orm_class, run, table_of


@pytest.fixture(autouse=True)
def restore_settings(monkeypatch):
    monkeypatch.setattr(Bemi, "transport", Bemi.transport)
    monkeypatch.setattr(Bemi, "include_sql", False)
    Bemi.set_context(None)
    yield
    Bemi.set_context(None)


@pytest.fixture
def sent():
    """Statements as SQLAlchemy handed them to the driver (after bemi's listener)."""
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(Engine, "after_cursor_execute", record)
    yield statements
    event.remove(Engine, "after_cursor_execute", record)


def insert_update_delete(name: str, orm: bool):
    """Three writes in one transaction: row 1 created, renamed, and row 2 created then deleted."""

    def work(db):
        if orm:
            Row = orm_class(name)
            first, second = Row(id=1, name="a"), Row(id=2, name="b")
            db.add_all([first, second])
            db.flush()
            first.name = "a2"
            db.delete(second)
            db.flush()
        else:
            t = table_of(name)
            db.execute(insert(t), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
            db.execute(update(t).where(t.c.id == 1).values(name="a2"))
            db.execute(t.delete().where(t.c.id == 2))

    return work


@pytest.mark.parametrize("orm", [False, True], ids=["core", "orm"])
@pytest.mark.parametrize("transport", ["auto", "comment", "set_context"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_context_reaches_every_change(pg, table, driver, transport, orm, sent):
    Bemi.transport = transport
    url = pg.url(driver)
    with bemi.context(user_id=42, endpoint="/todo", method="POST"):
        run(url, driver, insert_update_delete(table, orm), orm=orm)
    run(url, driver, lambda db: db.execute(text(f"INSERT INTO {table} (id, name) VALUES (3, 'anonymous')")))

    rows = changes(pg, table)
    assert [(c["operation"], c["primary_key"]) for c in rows] == [
        ("CREATE", "1"), ("CREATE", "2"), ("UPDATE", "1"), ("DELETE", "2"), ("CREATE", "3")
    ]
    expected = {"user_id": 42, "endpoint": "/todo", "method": "POST"}
    assert [app_context(c) for c in rows[:4]] == [expected] * 4
    assert app_context(rows[4]) == {}, "a context leaked into a later transaction on the same connection"
    assert set(rows[0]["context"]["_bemi"]) >= {"role", "application_name"}

    writes = [s for s in sent if s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "/*BEMI"))]
    commented = [s for s in writes if s.startswith("/*Bemi ")]
    uses_comment = transport == "comment" or (transport == "auto" and driver != "asyncpg")
    assert len(commented) == (len(writes) - 1 if uses_comment else 0)


@pytest.mark.parametrize("driver", DRIVERS)
def test_autocommit_connections_use_the_comment(pg, table, driver):
    Bemi.transport = "set_context"  # has no transaction to live in: the comment takes over
    with bemi.context(job="autocommit"):
        run(pg.url(driver), driver, lambda db: db.execute(text(f"INSERT INTO {table} (name) VALUES ('x')")),
            isolation_level="AUTOCOMMIT")
    assert [app_context(c) for c in changes(pg, table)] == [{"job": "autocommit"}]


@pytest.mark.parametrize("transport", ["comment", "set_context"])
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_savepoint_rollback_keeps_the_right_context(pg, table, driver, transport):
    Bemi.transport = transport

    def work(conn):
        with bemi.context(step="in savepoint"):
            savepoint = conn.begin_nested()
            conn.execute(text(f"INSERT INTO {table} (id, name) VALUES (1, 'rolled back')"))
            savepoint.rollback()
            conn.execute(text(f"INSERT INTO {table} (id, name) VALUES (2, 'kept')"))
        with bemi.context(step="after"):
            conn.execute(text(f"INSERT INTO {table} (id, name) VALUES (3, 'later')"))

    run(pg.url(driver), driver, work)
    rows = changes(pg, table)
    assert [(c["primary_key"], app_context(c)) for c in rows] == [
        ("2", {"step": "in savepoint"}), ("3", {"step": "after"})
    ]


@pytest.mark.parametrize("transport", ["comment", "set_context"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_clearing_the_context_mid_transaction_clears_it_for_later_writes(pg, table, driver, transport):
    Bemi.transport = transport

    def work(conn):
        Bemi.set_context({"user_id": 7})
        conn.execute(text(f"INSERT INTO {table} (id, name) VALUES (1, 'with')"))
        Bemi.set_context(None)
        conn.execute(text(f"INSERT INTO {table} (id, name) VALUES (2, 'without')"))

    run(pg.url(driver), driver, work)
    assert [app_context(c) for c in changes(pg, table)] == [{"user_id": 7}, {}]


@pytest.mark.parametrize("transport", ["comment", "set_context"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_include_sql_adds_the_statement(pg, table, driver, transport):
    Bemi.transport, Bemi.include_sql = transport, True
    with bemi.context(user_id=1):
        run(pg.url(driver), driver, lambda db: db.execute(text(f"UPDATE {table} SET note = 'n'")))
        run(pg.url(driver), driver, lambda db: db.execute(text(f"INSERT INTO {table} (name) VALUES ('x')")))
    [change] = changes(pg, table)
    assert change["context"]["user_id"] == 1
    assert change["context"]["SQL"] == f"INSERT INTO {table} (name) VALUES ('x')"


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_databases_without_the_extension_still_accept_writes(pg, driver):
    Bemi.transport = "set_context"
    dbname = pg.create_database(with_extension=False)

    def work(db):
        db.execute(text("CREATE TABLE t (id int)"))
        db.execute(text("INSERT INTO t VALUES (1)"))

    with bemi.context(user_id=1):
        run(pg.url(driver, dbname), driver, work)
    with pg.connect(dbname) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1


@pytest.mark.parametrize("transport", ["comment", "set_context"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_oversized_context_is_refused_before_the_write_is_sent(pg, table, driver, transport, sent, monkeypatch):
    Bemi.transport, Bemi.include_sql = transport, True
    monkeypatch.setattr(Bemi, "max_context_size", 200)
    with bemi.context(user_id=1, note="x" * 100):
        with pytest.raises(BemiContextTooLarge, match="over the limit of 200 bytes"):
            # The statement's own text makes the context too large only once it is added.
            run(pg.url(driver), driver, lambda db: db.execute(text(f"INSERT INTO {table} (name) VALUES ('{'y' * 100}')")))
    assert not [s for s in sent if "INSERT" in s], "the statement was sent although its context was refused"
    with pg.connect() as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0


def test_python_limit_matches_the_server_default(pg):
    with pg.connect() as conn:
        setting, unit = conn.execute("SELECT setting, unit FROM pg_settings WHERE name = 'bemi.max_context_size'").fetchone()
    multiplier = {"B": 1, "kB": 1024, "MB": 1024 * 1024, None: 1}[unit]
    assert int(setting) * multiplier == Bemi.max_context_size
