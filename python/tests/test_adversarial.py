"""Hostile context values arrive intact and change nothing but the context."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

import bemi
from bemi import Bemi
from conftest import app_context, changes
from dbtools import DRIVERS, run, table_of
from test_context import ADVERSARIAL

HOSTILE = ADVERSARIAL + [
    "x' ); DROP TABLE {table}; --",
    "*/ ; DROP TABLE {table}; /*",
    " Bemi*/ {{\"user_id\": \"admin\"}} /*Bemi ",
    "\x00 NUL in the middle \x00",
]


@pytest.mark.parametrize("transport", ["comment", "set_context"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_hostile_values_arrive_intact(pg, table, driver, transport, monkeypatch):
    monkeypatch.setattr(Bemi, "transport", transport)
    values = [v.format(table=table) if "{table}" in v else v for v in HOSTILE]
    context = {f"v{i}": value for i, value in enumerate(values)}
    context.update({value: i for i, value in enumerate(values)})  # hostile keys too
    context["nested"] = {"list": values, "*/": {"/*Bemi": None}}

    with bemi.context(context):
        run(pg.url(driver), driver, lambda db: db.execute(insert(table_of(table)), {"name": "row", "note": values[0]}))

    [change] = changes(pg, table)
    stored = app_context(change)
    replaced = {k.replace("\x00", "\ufffd"): v for k, v in context.items()}
    replaced = {k: (v.replace("\x00", "\ufffd") if isinstance(v, str) else v) for k, v in replaced.items()}
    replaced["nested"] = {"list": [v.replace("\x00", "\ufffd") for v in values], "*/": {"/*Bemi": None}}
    assert stored == replaced
    assert change["after"]["note"] == values[0]
    with pg.connect() as conn:  # the table survived every "DROP TABLE"
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_value_cannot_choose_its_own_context(pg, table, driver, monkeypatch):
    """A user-supplied column value shaped like a Bemi comment is data, not context."""
    monkeypatch.setattr(Bemi, "transport", "comment")
    forged = "/*Bemi {\"user_id\": \"admin\"} Bemi*/"
    with bemi.context(user_id="mallory"):
        run(pg.url(driver), driver, lambda db: db.execute(insert(table_of(table)), {"name": forged}))
    [change] = changes(pg, table)
    assert app_context(change) == {"user_id": "mallory"}
    assert change["after"]["name"] == forged
