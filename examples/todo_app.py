"""A FastAPI todo app whose every change lands in bemi.changes with who, where and how.

    BEMI_DSN=postgresql://postgres@127.0.0.1:5432/todo python examples/todo_app.py          # serve on :8000
    BEMI_DSN=postgresql://postgres@127.0.0.1:5432/todo python examples/todo_app.py demo     # run a demo, print changes

The database needs the bemi extension (CREATE EXTENSION bemi); the app creates its table.
"""

from __future__ import annotations

import asyncio
import os
import sys

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bemi import BemiFastAPIMiddleware


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str]
    is_completed: Mapped[bool] = mapped_column(default=False)


class NewTodo(BaseModel):
    task: str


def current_user(request: Request) -> int | None:
    """Stands in for real authentication: the user id comes from the X-User-Id header."""
    user = request.headers.get("x-user-id")
    return int(user) if user and user.isdigit() else None


def async_url(dsn: str) -> str:
    """postgresql://… → postgresql+psycopg://… (async psycopg 3); an explicit driver is kept."""
    scheme, rest = dsn.split("://", 1)
    return dsn if "+" in scheme else f"postgresql+psycopg://{rest}"


def create_app(dsn: str, **engine_options) -> FastAPI:
    engine = create_async_engine(async_url(dsn), **engine_options)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def lifespan(app: FastAPI):
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.state.engine = engine
    app.add_middleware(
        BemiFastAPIMiddleware,
        set_context=lambda request: {
            "user_id": current_user(request),
            "endpoint": request.url.path,
            "method": request.method,
        },
    )

    async def session():
        async with sessions() as s:
            yield s

    @app.get("/todo")
    async def list_todos(db: AsyncSession = Depends(session)):
        return [{"id": t.id, "task": t.task, "is_completed": t.is_completed} for t in await db.scalars(select(Todo))]

    @app.post("/todo", status_code=201)
    async def create_todo(new: NewTodo, db: AsyncSession = Depends(session)):
        todo = Todo(task=new.task)
        db.add(todo)
        await db.commit()
        return {"id": todo.id, "task": todo.task, "is_completed": todo.is_completed}

    @app.put("/todo/{todo_id}/complete")
    async def complete_todo(todo_id: int, db: AsyncSession = Depends(session)):
        todo = await db.get(Todo, todo_id)
        if todo is None:
            raise HTTPException(404)
        todo.is_completed = True
        await db.commit()
        return {"id": todo.id, "task": todo.task, "is_completed": todo.is_completed}

    @app.delete("/todo/{todo_id}", status_code=204)
    async def delete_todo(todo_id: int, db: AsyncSession = Depends(session)):
        todo = await db.get(Todo, todo_id)
        if todo is None:
            raise HTTPException(404)
        await db.delete(todo)
        await db.commit()

    return app


async def demo(dsn: str) -> None:
    """Creates three todos, completes one, deletes one, then prints what bemi recorded."""
    import httpx

    app = create_app(dsn)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://todo", headers={"X-User-Id": "187234"}) as client:
            ids = [(await client.post("/todo", json={"task": task})).json()["id"] for task in ("Sleep", "Eat", "Repeat")]
            await client.put(f"/todo/{ids[0]}/complete")
            await client.delete(f"/todo/{ids[1]}")
        async with app.state.engine.connect() as conn:
            await conn.execute(text("SELECT bemi_wait()"))
            rows = await conn.execute(
                text(
                    'SELECT primary_key, operation, before, after, context FROM bemi.changes '
                    "WHERE \"table\" = 'todo' AND primary_key = ANY(:ids) ORDER BY id"
                ),
                {"ids": [str(i) for i in ids]},
            )
            for row in rows:
                print(" | ".join(str(value) for value in row))


def main() -> None:
    dsn = os.environ.get("BEMI_DSN")
    if not dsn:
        sys.exit("Set BEMI_DSN to the database, e.g. BEMI_DSN=postgresql://postgres@127.0.0.1:5432/todo")
    if sys.argv[1:] == ["demo"]:
        asyncio.run(demo(dsn))
    else:
        import uvicorn

        uvicorn.run(create_app(dsn), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))


if __name__ == "__main__":
    main()
