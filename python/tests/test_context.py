"""The context API without a server: validation, encoding, scoping across tasks and threads."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from bemi import Bemi, BemiContextError, BemiContextTooLarge, context
from bemi.context import encode
from bemi.transport import comment_for, is_write

ADVERSARIAL = [
    "*/ DROP TABLE x; --",
    "Bemi*/",
    "/*Bemi {} Bemi*/",
    "/* nested",
    "it's \"quoted\" '' \\' \\\" ",
    "back\\slash\\\\ \\u0000 \\x00",
    "".join(chr(c) for c in range(1, 32)) + "\x7f",
    "$$ $bemi$ E'\\\\'",
    "ünïcødé 🦄 \u2028\u2029",
    "%s %(context)s %% % $1 :name ? {}",
]


@pytest.fixture(autouse=True)
def no_context():
    Bemi.set_context(None)
    yield
    Bemi.set_context(None)


@pytest.mark.parametrize("value", ADVERSARIAL)
def test_adversarial_values_stay_inside_the_json_string(value):
    comment = comment_for(encode({"v": value, value: 1}))
    assert comment.startswith("/*Bemi ") and comment.endswith(" Bemi*/ ")
    body = comment[len("/*Bemi ") : -len(" Bemi*/ ")]
    assert "*" not in body and "/" not in body and "%" not in body
    assert body.isascii() and body.isprintable()
    assert json.loads(body) == {"v": value, value: 1}


def test_nul_and_lone_surrogates_become_replacement_characters():
    # PostgreSQL's jsonb cannot store U+0000 or an unpaired surrogate.
    assert json.loads(encode({"v": "a\x00b\ud800c"}).json) == {"v": "a\ufffdb\ufffdc"}
    assert json.loads(encode({"k\x00": 1}).json) == {"k\ufffd": 1}


@pytest.mark.parametrize(
    "bad, message",
    [
        (["not", "an", "object"], "must be a dict"),
        ("{}", "must be a dict"),
        ({"_bemi": {"role": "admin"}}, "reserved"),
        ({"x": float("nan")}, "JSON cannot hold"),
        ({"x": object()}, "not JSON"),
        ({1: "x"}, "keys must be strings"),
    ],
)
def test_invalid_contexts_are_refused(bad, message):
    with pytest.raises(BemiContextError, match=message):
        Bemi.set_context(bad)
    assert Bemi.get_context() is None


def test_oversized_context_is_refused_before_anything_is_sent():
    with pytest.raises(BemiContextTooLarge, match="over the limit of 1048576 bytes"):
        Bemi.set_context({"blob": "x" * (1024 * 1024)})
    assert Bemi.get_context() is None


def test_size_limit_counts_the_encoded_form_and_is_configurable(monkeypatch):
    monkeypatch.setattr(Bemi, "max_context_size", 100)
    Bemi.set_context({"v": "x" * 80})
    with pytest.raises(BemiContextTooLarge):
        Bemi.set_context({"v": "*" * 20})  # 20 characters, 120 bytes once escaped


def test_context_manager_merges_and_restores():
    Bemi.set_context({"user_id": 1, "endpoint": "/a"})
    with context({"job": "nightly"}, endpoint=None):
        assert Bemi.get_context() == {"user_id": 1, "endpoint": None, "job": "nightly"}
        with context(user_id=2):
            assert Bemi.get_context()["user_id"] == 2
        assert Bemi.get_context()["user_id"] == 1
    assert Bemi.get_context() == {"user_id": 1, "endpoint": "/a"}


def test_context_manager_restores_after_an_exception():
    with pytest.raises(RuntimeError):
        with context(job="x"):
            raise RuntimeError
    assert Bemi.get_context() is None


def test_common_python_values_are_encoded():
    import datetime
    import decimal
    import uuid

    value = encode({"d": datetime.date(2024, 1, 2), "u": uuid.UUID(int=1), "n": decimal.Decimal("1.5"), "t": (1, 2)})
    assert json.loads(value.json) == {"d": "2024-01-02", "u": str(uuid.UUID(int=1)), "n": "1.5", "t": [1, 2]}


async def test_each_asyncio_task_sees_its_own_context():
    async def work(i):
        Bemi.set_context({"user_id": i})
        await asyncio.sleep(0.001 * (i % 5))
        return Bemi.get_context()["user_id"]

    assert await asyncio.gather(*(work(i) for i in range(100))) == list(range(100))


def test_each_thread_sees_its_own_context():
    seen = {}
    barrier = threading.Barrier(8)

    def work(i):
        Bemi.set_context({"user_id": i})
        barrier.wait()
        seen[i] = Bemi.get_context()["user_id"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {i: i for i in range(8)}
    assert Bemi.get_context() is None


@pytest.mark.parametrize(
    "statement, write",
    [
        ("INSERT INTO t VALUES (1)", True),
        ("  update t set a = 1", True),
        ("/* app */ DELETE FROM t", True),
        ("-- note\nMERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", True),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", True),
        ("(INSERT INTO t VALUES (1))", True),
        ("SELECT * FROM t", False),
        ("SELECT bemi_context()", False),
        ("insertion_table", False),
    ],
)
def test_write_statements_are_recognised(statement, write):
    assert is_write(statement) is write
