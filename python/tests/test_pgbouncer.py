"""Behind PgBouncer in transaction pooling mode, no client's context reaches another client's writes."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import bemi
from bemi import Bemi
from conftest import app_context, changes, free_port

PGBOUNCER = shutil.which("pgbouncer") or next((p for p in ["/usr/sbin/pgbouncer"] if os.path.exists(p)), None)
CLIENTS = 40
SERVER_CONNECTIONS = 2
STEPS = 3  # transactions per client connection, each on whichever server connection is free


@pytest.fixture
def bouncer(pg, tmp_path_factory):
    """A fresh pgbouncer for each test, so that one test's stuck clients cannot starve the next."""
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    base = tmp_path_factory.mktemp("pgbouncer")
    port = free_port()
    (base / "users.txt").write_text(f'"{pg.user}" ""\n')
    (base / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={pg.host} port={pg.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {base / "users.txt"}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 500
query_wait_timeout = 30
admin_users = {pg.user}
ignore_startup_parameters = extra_float_digits, options
logfile = {base / "pgbouncer.log"}
"""
    )
    process = subprocess.Popen([PGBOUNCER, str(base / "pgbouncer.ini")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log = (base / "pgbouncer.log").read_text() if (base / "pgbouncer.log").exists() else ""
                pytest.fail(f"pgbouncer did not start:\n{process.stdout.read().decode()}\n{log}", pytrace=False)
            time.sleep(0.1)
    yield port
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _stack(task) -> str:
    out = io.StringIO()
    task.print_stack(file=out)
    return out.getvalue()


def client_names():
    """Half the clients write with a context, half without; interleaved."""
    return [(i, i % 2 == 0) for i in range(CLIENTS)]


def check(pg, table, backend_pids):
    rows = changes(pg, table)
    assert len(rows) == CLIENTS * STEPS
    for change in rows:
        client = int(change["after"]["name"].split("-")[0])
        expected = {"user_id": client} if client % 2 == 0 else {}
        assert app_context(change) == expected, f"client {client} got another client's context"
    # The clients really shared server connections.
    assert len(backend_pids) <= SERVER_CONNECTIONS < CLIENTS


@pytest.mark.parametrize("transport", ["comment", "set_context"])
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_threads_through_pgbouncer_keep_their_own_context(pg, bouncer, table, driver, transport, monkeypatch):
    monkeypatch.setattr(Bemi, "transport", transport)
    connect_args = {"prepare_threshold": None} if driver == "psycopg" else {}
    engine = create_engine(pg.url(driver, port=bouncer), poolclass=NullPool, connect_args=connect_args)
    pids, errors = set(), []

    def client(i, with_context):
        try:
            write(i, with_context)
        except Exception as error:  # reported by the main thread
            errors.append(error)

    def write(i, with_context):
        Bemi.set_context({"user_id": i} if with_context else None)
        with engine.connect() as conn:
            for step in range(STEPS):
                with conn.begin():
                    pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar())
                    conn.execute(text(f"INSERT INTO {table} (name) VALUES (:n)"), {"n": f"{i}-{step}"})

    threads = [threading.Thread(target=client, args=c) for c in client_names()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    engine.dispose()
    assert not errors, errors[:3]
    check(pg, table, pids)


@pytest.mark.parametrize("transport", ["comment", "set_context"])
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
def test_tasks_through_pgbouncer_keep_their_own_context(pg, bouncer, table, driver, transport, monkeypatch):
    monkeypatch.setattr(Bemi, "transport", transport)
    if driver == "asyncpg":
        # PgBouncer < 1.21 cannot carry prepared statements in transaction mode: unique names, no cache.
        url = pg.url(driver, port=bouncer) + "?prepared_statement_cache_size=0"
        connect_args = {"statement_cache_size": 0, "prepared_statement_name_func": lambda: f"__a_{uuid.uuid4()}__"}
    else:
        url, connect_args = pg.url(driver, port=bouncer), {"prepare_threshold": None}
    pids = set()

    async def main():
        engine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)

        async def client(i, with_context):
            Bemi.set_context({"user_id": i} if with_context else None)
            async with engine.connect() as conn:
                for step in range(STEPS):
                    async with conn.begin():
                        pids.add((await conn.execute(text("SELECT pg_backend_pid()"))).scalar())
                        await asyncio.sleep(0.001 * (i % 3))
                        await conn.execute(text(f"INSERT INTO {table} (name) VALUES (:n)"), {"n": f"{i}-{step}"})

        tasks = [asyncio.ensure_future(client(i, w)) for i, w in client_names()]
        done, pending = await asyncio.wait(tasks, timeout=60)
        stuck = "\n".join(_stack(t) for t in list(pending)[:3])
        for t in pending:
            t.cancel()
        await engine.dispose()
        assert not pending, f"{len(pending)} clients still waiting after 60 s:\n{stuck}"
        for t in done:
            t.result()

    asyncio.run(main())
    check(pg, table, pids)
