"""The example FastAPI todo app: each change carries the user, endpoint and method of its request."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from conftest import app_context, wait_for_changes
from todo_app import create_app

DRIVERS = ["asyncpg", "psycopg"]


async def started(app):
    """Runs the app's lifespan (creating its table) and returns its context manager to exit later."""
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    return lifespan


def todo_changes(pg, since: int) -> list[dict]:
    wait_for_changes(pg)
    with pg.connect() as conn:
        cur = conn.execute(
            "SELECT primary_key, operation, before, after, context FROM bemi.changes "
            "WHERE \"table\" = 'todo' AND operation <> 'DDL' AND id > %s ORDER BY id",
            (since,),
        )
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def last_change_id(pg) -> int:
    wait_for_changes(pg)
    with pg.connect() as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM bemi.changes").fetchone()[0]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_todo_flow_records_five_changes_with_context(pg, driver):
    app = create_app(pg.url(driver))
    lifespan = await started(app)
    since = last_change_id(pg)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://todo", headers={"X-User-Id": "187234"}) as client:
            ids = []
            for task in ("Sleep", "Eat", "Repeat"):
                response = await client.post("/todo", json={"task": task})
                assert response.status_code == 201
                ids.append(response.json()["id"])
            assert (await client.put(f"/todo/{ids[0]}/complete")).json()["is_completed"] is True
            assert (await client.delete(f"/todo/{ids[1]}")).status_code == 204
    finally:
        await lifespan.__aexit__(None, None, None)

    rows = todo_changes(pg, since)
    assert [(c["operation"], c["primary_key"]) for c in rows] == [
        ("CREATE", str(ids[0])), ("CREATE", str(ids[1])), ("CREATE", str(ids[2])),
        ("UPDATE", str(ids[0])), ("DELETE", str(ids[1])),
    ]
    post = {"user_id": 187234, "endpoint": "/todo", "method": "POST"}
    assert [app_context(c) for c in rows] == [
        post, post, post,
        {"user_id": 187234, "endpoint": f"/todo/{ids[0]}/complete", "method": "PUT"},
        {"user_id": 187234, "endpoint": f"/todo/{ids[1]}", "method": "DELETE"},
    ]
    assert rows[0]["before"] == {} and rows[0]["after"] == {"id": ids[0], "task": "Sleep", "is_completed": False}
    assert rows[3]["before"]["is_completed"] is False and rows[3]["after"]["is_completed"] is True
    assert rows[4]["before"]["task"] == "Eat" and rows[4]["after"] == {}


@pytest.mark.parametrize("driver", DRIVERS)
async def test_200_concurrent_requests_keep_their_own_user(pg, driver):
    # Few connections for many requests: every connection serves many users in turn.
    app = create_app(pg.url(driver), pool_size=5, max_overflow=0)
    lifespan = await started(app)
    since = last_change_id(pg)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://todo") as client:
            responses = await asyncio.gather(
                *(client.post("/todo", json={"task": f"user {user}"}, headers={"X-User-Id": str(user)}) for user in range(200))
            )
    finally:
        await lifespan.__aexit__(None, None, None)
    assert [r.status_code for r in responses] == [201] * 200

    rows = todo_changes(pg, since)
    assert len(rows) == 200
    for change in rows:
        user = int(change["after"]["task"].split()[1])
        assert app_context(change) == {"user_id": user, "endpoint": "/todo", "method": "POST"}
