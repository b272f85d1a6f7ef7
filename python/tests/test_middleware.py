"""The ASGI middleware and the Flask extension scope the context to one request (no server)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from flask import Flask

from bemi import Bemi, BemiFastAPIMiddleware, BemiFlask


def make_fastapi_app() -> FastAPI:
    app = FastAPI()

    def authenticate(request: Request) -> None:
        # A sync dependency runs in a worker thread; its set_context must reach the endpoint.
        if "x-late-user" in request.headers:
            Bemi.set_context({**Bemi.get_context(), "late_user": request.headers["x-late-user"]})

    @app.get("/async/{n}")
    async def async_endpoint(n: int, _=Depends(authenticate)):
        await asyncio.sleep(0.001 * (n % 7))
        return Bemi.get_context()

    @app.get("/sync")
    def sync_endpoint(_=Depends(authenticate)):
        return Bemi.get_context()

    async def context_for(request):
        return {"user_id": request.headers.get("x-user-id"), "endpoint": request.url.path, "method": request.method}

    app.add_middleware(BemiFastAPIMiddleware, set_context=context_for)
    return app


async def test_fastapi_requests_each_get_their_own_context():
    app = make_fastapi_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        responses = await asyncio.gather(
            *(client.get(f"/async/{i}", headers={"x-user-id": str(i)}) for i in range(50)),
            *(client.get("/sync", headers={"x-user-id": f"s{i}"}) for i in range(20)),
        )
    bodies = [r.json() for r in responses]
    assert [b["user_id"] for b in bodies] == [str(i) for i in range(50)] + [f"s{i}" for i in range(20)]
    assert bodies[3] == {"user_id": "3", "endpoint": "/async/3", "method": "GET"}
    assert Bemi.get_context() is None


async def test_set_context_in_a_sync_dependency_reaches_the_endpoint():
    app = make_fastapi_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        body = (await client.get("/async/1", headers={"x-user-id": "7", "x-late-user": "alice"})).json()
        assert body["late_user"] == "alice" and body["user_id"] == "7"
        assert "late_user" not in (await client.get("/async/2", headers={"x-user-id": "8"})).json()


def test_flask_requests_each_get_their_own_context():
    app = Flask(__name__)
    BemiFlask(app, set_context=lambda request: {"user_id": request.headers.get("X-User-Id"), "endpoint": request.path})

    @app.get("/whoami")
    def whoami():
        return Bemi.get_context() or {}

    client = app.test_client()
    assert client.get("/whoami", headers={"X-User-Id": "1"}).json == {"user_id": "1", "endpoint": "/whoami"}
    assert client.get("/whoami", headers={"X-User-Id": "2"}).json["user_id"] == "2"
    assert Bemi.get_context() is None


def test_a_context_that_cannot_be_encoded_fails_the_request_not_silently():
    app = Flask(__name__)
    BemiFlask(app, set_context=lambda request: {"_bemi": 1})
    app.get("/")(lambda: "ok")
    assert app.test_client().get("/").status_code == 500
