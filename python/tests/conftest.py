"""A real PostgreSQL (15 to 18) with the bemi extension, started once for the whole test session.

The server runs from a temporary directory as the current (unprivileged) user, listens on
127.0.0.1 with a free port and on a unix socket in that directory, and is stopped at the end.
Set BEMI_PG_BINDIR to use other server binaries than ``pg_config --bindir`` (test/run-all sets it
for each version it tests).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
# The package under test is this tree's, even when run from the repository root, where the
# extension's bemi.so would otherwise be taken by `python -m pytest` for a module named bemi.
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "python"))

SERVER_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
wal_level = logical
shared_preload_libraries = 'bemi'
output_plugin_libraries = 'pgoutput, test_decoding, bemi'
max_replication_slots = 10
max_wal_senders = 10
max_worker_processes = 16
max_connections = 300
fsync = off
full_page_writes = off
logging_collector = off
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bindir() -> Path:
    if os.environ.get("BEMI_PG_BINDIR"):
        return Path(os.environ["BEMI_PG_BINDIR"])
    pg_config = shutil.which("pg_config") or "/usr/lib/postgresql/15/bin/pg_config"
    return Path(subprocess.run([pg_config, "--bindir"], check=True, capture_output=True, text=True).stdout.strip())


def knows_setting(bin_dir: Path, name: str) -> bool:
    """Does this server have the setting? (output_plugin_libraries: only this environment's Debian 15.)"""
    described = subprocess.run([str(bin_dir / "postgres"), "--describe-config"], capture_output=True, text=True)
    return any(line.split("\t", 1)[0] == name for line in described.stdout.splitlines())


@dataclass
class Server:
    """How to reach the test server; ``url(driver)`` gives a SQLAlchemy URL for one database."""

    host: str
    port: int
    socket_dir: Path
    user: str
    dbname: str
    data_dir: Path
    log_file: Path

    def dsn(self, dbname: str | None = None) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname or self.dbname}"

    def url(self, driver: str, dbname: str | None = None, host: str | None = None, port: int | None = None) -> str:
        return f"postgresql+{driver}://{self.user}@{host or self.host}:{port or self.port}/{dbname or self.dbname}"

    def connect(self, dbname: str | None = None) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def create_database(self, with_extension: bool = True) -> str:
        name = f"bemi_{uuid.uuid4().hex[:10]}"
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        if with_extension:
            with self.connect(name) as conn:
                conn.execute("CREATE EXTENSION bemi")
        return name

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return "(no server log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def pg(tmp_path_factory) -> Server:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.fail(
            "PostgreSQL refuses to run as root: run the bemi Python tests as an unprivileged user, "
            "e.g. `su postgres -c 'pytest python/tests'` (the venv and the repository must be readable by that user)",
            pytrace=False,
        )
    bin_dir = bindir()
    base = tmp_path_factory.mktemp("pg")
    data_dir, log_file = base / "data", base / "server.log"
    port = free_port()
    init = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        capture_output=True, text=True,
    )
    if init.returncode != 0:
        pytest.fail(f"initdb failed:\n{init.stdout}\n{init.stderr}", pytrace=False)
    settings = SERVER_SETTINGS.format(port=port, socket_dir=base)
    if not knows_setting(bin_dir, "output_plugin_libraries"):
        settings = "\n".join(l for l in settings.splitlines() if not l.startswith("output_plugin_libraries"))
    with open(data_dir / "postgresql.conf", "a") as conf:
        conf.write(settings)
    server = Server("127.0.0.1", port, base, "postgres", "bemi_test", data_dir, log_file)
    start = subprocess.run(
        [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "60", "start"],
        capture_output=True, text=True,
    )
    if start.returncode != 0:
        pytest.fail(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{server.log_tail()}", pytrace=False)
    try:
        with server.connect("postgres") as conn:
            conn.execute('CREATE DATABASE "bemi_test"')
        try:
            with server.connect() as conn:
                conn.execute("CREATE EXTENSION bemi")
        except psycopg.Error as error:
            pytest.fail(
                f"CREATE EXTENSION bemi failed: {error}\nIs the extension installed (`make -C {REPO} install` as root)?\n"
                f"{server.log_tail()}",
                pytrace=False,
            )
        yield server
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"], capture_output=True)


@pytest.fixture
def table(pg) -> str:
    """A fresh table ``t_<random>(id serial primary key, name text, note text)`` in bemi_test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, name text NOT NULL, note text)")
    return name


def wait_for_changes(pg: Server, dbname: str | None = None) -> None:
    """Blocks until everything committed so far is in bemi.changes."""
    with pg.connect(dbname) as conn:
        assert conn.execute("SELECT bemi_wait()").fetchone()[0] is True, "bemi_wait() timed out"


def changes(pg: Server, table: str, dbname: str | None = None) -> list[dict]:
    """bemi.changes rows of one table, oldest first, after bemi_wait()."""
    wait_for_changes(pg, dbname)
    with pg.connect(dbname) as conn:
        cur = conn.execute(
            'SELECT primary_key, operation, before, after, context FROM bemi.changes '
            'WHERE "table" = %s AND operation <> \'DDL\' ORDER BY id',
            (table,),
        )
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def app_context(change: dict) -> dict:
    """The application's part of a change's context (without the extension's "_bemi")."""
    return {k: v for k, v in (change["context"] or {}).items() if k != "_bemi"}
