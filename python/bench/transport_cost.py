"""Measures what each way of carrying the context costs, per driver.

    BEMI_BENCH_DSN=postgresql://postgres@127.0.0.1:5432/bench python python/bench/transport_cost.py [transactions]

For each driver and each transport ("none" = no context at all, "comment", "set_context") it runs
the same workload: transactions of one INSERT and one UPDATE through SQLAlchemy Core, each
transaction with a different context (as when every request comes from a different user). It reports:

- round trips per transaction, counted by a loopback proxy between the driver and the server
  (a round trip is a burst of client messages followed by the server's answer);
- server-side prepared statements left on the connection afterwards (the effect on statement caches);
- time per transaction, direct and through the proxy with 1 ms added to every round trip (a
  typical cross-host latency), as a ratio to "none" measured in the same run.

The database needs the bemi extension.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

import bemi
from bemi import Bemi

DRIVERS = ["psycopg2", "psycopg", "asyncpg"]
TRANSPORTS = ["none", "comment", "set_context"]


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts client→server turns and can delay each one."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.turns = 0
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        started = threading.Event()
        threading.Thread(target=self._serve, args=(started,), daemon=True).start()
        started.wait()

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        started.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _client(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        state = {"last": "server"}

        async def pump(reader, writer, side):
            while data := await reader.read(65536):
                if side == "client" and state["last"] == "server":
                    self.turns += 1
                    if self.delay:
                        await asyncio.sleep(self.delay)
                state["last"] = side
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(pump(client_reader, server_writer, "client"), pump(server_reader, client_writer, "server"),
                             return_exceptions=True)


def workload(table: str, transactions: int, transport: str):
    """A sync function run on a Connection (directly, or via run_sync for async engines)."""

    def work(conn):
        for i in range(transactions):
            if transport == "none":
                Bemi.set_context(None)
            else:
                Bemi.set_context({"user_id": i, "endpoint": "/todo", "method": "POST"})
            with conn.begin():
                conn.execute(text(f"INSERT INTO {table} (id, task) VALUES (:id, 'task')"), {"id": i})
                conn.execute(text(f"UPDATE {table} SET done = true WHERE id = :id"), {"id": i})
        Bemi.set_context(None)
        return conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar()

    return work


def measure(url: str, driver: str, transport: str, transactions: int) -> tuple[float, int]:
    """Seconds for the workload, and prepared statements left on the connection."""
    Bemi.transport = "comment" if transport == "none" else transport
    table = f"bench_{driver}_{transport}"
    setup = create_engine(url.replace(f"+{driver}", "+psycopg"), isolation_level="AUTOCOMMIT")
    with setup.connect() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, task text, done bool)"))
    setup.dispose()
    work = workload(table, transactions, transport)
    if driver == "asyncpg":
        async def go():
            engine = create_async_engine(url)
            async with engine.connect() as conn:
                await conn.run_sync(workload(table, 5, "none"))  # connect and warm up outside the timing
                await conn.execute(text(f"TRUNCATE {table}"))
                await conn.commit()
                started = time.perf_counter()
                prepared = await conn.run_sync(work)
                elapsed = time.perf_counter() - started
            await engine.dispose()
            return elapsed, prepared
        return asyncio.run(go())
    engine = create_engine(url)
    with engine.connect() as conn:
        workload(table, 5, "none")(conn)
        conn.execute(text(f"TRUNCATE {table}"))
        conn.commit()
        started = time.perf_counter()
        prepared = work(conn)
        elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed, prepared


def main() -> None:
    dsn = os.environ.get("BEMI_BENCH_DSN")
    if not dsn:
        sys.exit("Set BEMI_BENCH_DSN to a database with the bemi extension")
    transactions = int(sys.argv[1]) if len(sys.argv) > 1 else 500  # timings: best of 3 runs each
    parts = urlsplit(dsn)
    proxy = CountingProxy(parts.hostname, parts.port or 5432)
    direct = {d: dsn.replace("postgresql://", f"postgresql+{d}://", 1) for d in DRIVERS}
    proxied = {d: u.replace(f"@{parts.hostname}:{parts.port or 5432}/", f"@127.0.0.1:{proxy.port}/") for d, u in direct.items()}

    print(f"{transactions} transactions of INSERT + UPDATE, a different context each\n")
    print("| driver | transport | round trips / transaction | prepared statements left | time vs none (loopback) | time vs none (+1 ms per round trip) |")
    print("|---|---|---|---|---|---|")
    for driver in DRIVERS:
        results = {}
        for transport in TRANSPORTS:
            # Round trips and prepared statements, through the proxy without delay.
            proxy.delay, proxy.turns = 0.0, 0
            measure(proxied[driver], driver, transport, 0)
            fixed = proxy.turns
            proxy.turns = 0
            _, prepared = measure(proxied[driver], driver, transport, transactions)
            trips = (proxy.turns - fixed) / transactions
            best = min(measure(direct[driver], driver, transport, transactions)[0] for _ in range(3))
            proxy.delay = 0.001
            slow = min(measure(proxied[driver], driver, transport, transactions // 5)[0] for _ in range(3))
            proxy.delay = 0.0
            results[transport] = (trips, prepared, best, slow)
        base = results["none"]
        for transport, (trips, prepared, best, slow) in results.items():
            print(f"| {driver} | {transport} | {trips:.2f} | {prepared} | {best / base[2]:.2f} | {slow / base[3]:.2f} |")
        print(f"| {driver} | (none: {base[2] / transactions * 1000:.3f} ms and {base[3] / (transactions // 5) * 1000:.3f} ms per transaction) | | | | |")


if __name__ == "__main__":
    main()
