"""The read-only BemiChange model, a model instance's history, the Alembic helper, Flask with a database."""

from __future__ import annotations

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from flask import Flask
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import bemi
from bemi import BemiFlask
from bemi.alembic import disable_bemi, enable_bemi, set_replica_identity_full
from bemi.models import BemiChange, BemiReadOnlyError, history, history_query, primary_key_text
from conftest import app_context, wait_for_changes


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "project"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Membership(Base):
    __tablename__ = "membership"
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), primary_key=True)
    user_name: Mapped[str] = mapped_column(primary_key=True)
    role: Mapped[str]


@pytest.fixture(scope="module")
def engine(pg):
    engine = create_engine(pg.url("psycopg", pg.create_database()))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_history_lists_an_instances_changes_newest_first(pg, engine):
    with Session(engine) as session:
        with bemi.context(user_id=1):
            project = Project(id=10, name="first")
            other = Project(id=11, name="other")
            session.add_all([project, other])
            session.commit()
        with bemi.context(user_id=2):
            project.name = "renamed"
            other.name = "other renamed"
            session.commit()
        wait_for_changes(pg, engine.url.database)
        changes = history(session, project)
        assert [(c.operation, c.after["name"], app_context({"context": c.context})) for c in changes] == [
            ("UPDATE", "renamed", {"user_id": 2}),
            ("CREATE", "first", {"user_id": 1}),
        ]
        assert changes[0].before["name"] == "first" and changes[0].table == "project"


def test_composite_keys_match_the_extensions_text(pg, engine):
    with Session(engine) as session:
        membership = Membership(project_id=10, user_name='ann "the admin"', role="owner")
        session.add(membership)
        session.commit()
        assert primary_key_text(membership) == '[10, "ann \\"the admin\\""]'
        wait_for_changes(pg, engine.url.database)
        [change] = session.scalars(history_query(membership)).all()
        assert change.operation == "CREATE" and change.after["role"] == "owner"


def test_changes_are_read_only(pg, engine):
    with Session(engine) as session:
        session.add(Project(id=12, name="x"))
        session.commit()
        wait_for_changes(pg, engine.url.database)
        change = session.scalars(history_query(session.get(Project, 12))).one()
        change.operation = "DELETE"
        with pytest.raises(BemiReadOnlyError):
            session.flush()
        session.rollback()
        session.add(BemiChange(id=-1, operation="CREATE"))
        with pytest.raises(BemiReadOnlyError):
            session.flush()


def test_bemi_change_is_not_in_the_applications_metadata():
    assert "bemi.changes" not in Base.metadata.tables


def test_alembic_helper_enables_the_extension_and_full_replica_identity(pg):
    dbname = pg.create_database(with_extension=False)
    engine = create_engine(pg.url("psycopg", dbname))
    with engine.begin() as conn:
        conn.execute(text('CREATE SCHEMA app; CREATE TABLE app."Todo" (id int PRIMARY KEY); CREATE TABLE plain (id int PRIMARY KEY)'))
        conn.execute(text('ALTER TABLE app."Todo" REPLICA IDENTITY DEFAULT; ALTER TABLE plain REPLICA IDENTITY DEFAULT'))
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        enable_bemi(tables=["app.Todo", "plain"], op=op)
        enable_bemi(op=op)  # idempotent
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'bemi'")).scalar() == 1
        identities = dict(conn.execute(text(
            "SELECT relname, relreplident FROM pg_class WHERE relname IN ('Todo', 'plain')")).all())
        assert identities == {"Todo": "f", "plain": "f"}
    with engine.begin() as conn:
        # With bemi installed only a superuser with the setting off may drop FULL (src/context/ddl_guard.cpp).
        conn.execute(text("SET LOCAL bemi.replica_identity_full = off"))
        conn.execute(text("ALTER TABLE plain REPLICA IDENTITY DEFAULT"))
        plain = Table("plain", MetaData(), Column("id", Integer, primary_key=True))
        set_replica_identity_full([plain], op=Operations(MigrationContext.configure(conn)))
        assert conn.execute(text("SELECT relreplident FROM pg_class WHERE relname = 'plain'")).scalar() == "f"
    with engine.begin() as conn:
        disable_bemi(op=Operations(MigrationContext.configure(conn)), drop_trail=True)
        assert conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'bemi'")).scalar() == 0
    engine.dispose()


def test_flask_request_context_reaches_the_database(pg, engine):
    app = Flask(__name__)
    BemiFlask(app, set_context=lambda request: {"user_id": request.headers.get("X-User-Id"), "endpoint": request.path})

    @app.post("/projects/<int:project_id>")
    def create(project_id):
        with Session(engine) as session:
            session.add(Project(id=project_id, name="from flask"))
            session.commit()
        return "", 201

    client = app.test_client()
    assert client.post("/projects/20", headers={"X-User-Id": "u20"}).status_code == 201
    assert client.post("/projects/21", headers={"X-User-Id": "u21"}).status_code == 201
    wait_for_changes(pg, engine.url.database)
    with Session(engine) as session:
        for project_id in (20, 21):
            [change] = history(session, session.get(Project, project_id))
            assert app_context({"context": change.context}) == {"user_id": f"u{project_id}", "endpoint": f"/projects/{project_id}"}
