"""`Database.tx()` on Postgres: the hot path's asyncpg connections, taken from (and given back to) the
engine's pool through SQLAlchemy's public raw-connection API; and the opener that hands them out.

A connection goes back to the pool only when its state is known: after success, or after an error
Postgres raised about the statement. Cancelled or broken mid-statement, it is discarded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from fastapi import FastAPI

from app.core import db as db_module
from app.core.config import Settings
from app.core.db import Database, Driver, Transactions, create_engine
from app.core.errors import is_db_unavailable
from app.core.metrics import Metrics
from app.state import Resources, TransactionsDep
from tests.fixtures.services import admin_database_url
from tests.resilience.server import kill_pg_connections


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    engine = create_engine(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    try:
        yield Database(engine, Metrics())
    finally:
        await engine.dispose()


@asynccontextmanager
async def driver_of(db: Database) -> AsyncIterator[Driver]:
    async with db.tx() as tx:
        assert tx.driver is not None
        yield tx.driver


async def backend(db: Database) -> int:
    async with driver_of(db) as driver:
        (row,) = await driver.fetch("SELECT pg_backend_pid()")
        return int(row[0])


async def test_a_connection_goes_back_to_the_pool_after_success_and_after_a_statement_error(db: Database) -> None:
    first = await backend(db)
    with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
        async with driver_of(db) as driver:
            await driver.fetch("SELECT 1 / 0")
    assert await backend(db) == first  # the one pooled connection, reused both times


async def test_statements_are_counted_and_commit_by_themselves(db: Database) -> None:
    statements = db._statements
    before = statements._value.get()
    async with driver_of(db) as driver:
        await driver.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
        await driver.execute("INSERT INTO t VALUES (1)")
        (row,) = await driver.fetch("SELECT count(*), pg_current_xact_id_if_assigned() IS NULL FROM t")
    assert statements._value.get() - before == 3
    assert tuple(row) == (1, True)  # no transaction left open around the statements


async def test_a_statement_cancelled_midway_discards_its_connection(db: Database) -> None:
    first = await backend(db)

    async def slow() -> None:
        async with driver_of(db) as driver:
            await driver.fetch("SELECT pg_sleep(5)")

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The pool's one slot is free again, on a new connection: the old one's state was unknown.
    assert await asyncio.wait_for(backend(db), 5) != first


async def test_a_backend_killed_in_the_pool_is_unavailable_not_a_bug_and_is_replaced(
    db: Database, settings: Settings
) -> None:
    first = await backend(db)
    assert await kill_pg_connections(admin_database_url(), settings.app_name) == 1  # the pool's one
    # The hang-up may not have been seen yet: the first try may fail, as a 503 (never a 500).
    tries: list[int | Exception] = []
    while not tries or not isinstance(tries[-1], int):
        assert len(tries) < 2, tries
        try:
            tries.append(await backend(db))
        except Exception as exc:
            tries.append(exc)
    assert all(isinstance(t, int) or is_db_unavailable(t) for t in tries), tries
    assert tries[-1] != first


async def test_an_idle_connection_whose_backend_died_is_replaced_at_checkout(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await backend(db)
    assert await kill_pg_connections(admin_database_url(), settings.app_name) == 1  # the pool's one
    await asyncio.sleep(0.2)  # the hang-up has arrived: the pooled connection is closed
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.0)  # every checkout pings
    assert await backend(db) != first  # first try: the ping found it dead, the pool opened another


async def test_an_opener_opens_transactions_only_while_its_owner_holds_it(db: Database) -> None:
    transactions = db.transactions()
    with pytest.raises(RuntimeError, match="outside its owner's lifetime"):
        transactions()
    async with transactions:
        async with transactions() as tx:
            assert tx.driver is not None
            assert (await tx.driver.fetch("SELECT 1"))[0][0] == 1
    with pytest.raises(RuntimeError, match="outside its owner's lifetime"):
        transactions()  # a turn that outlived its request must use its run's own
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_block_that_ends_with_our_error_or_a_statement_error_gives_its_connection_back(db: Database) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from app.core.errors import NotFound

    first = await backend(db)
    with pytest.raises(NotFound):
        async with db.tx():
            raise NotFound()  # a 404 decided between statements: the connection is idle and fine
    with pytest.raises(DBAPIError):
        async with db.tx() as tx:
            await tx.conn.execute(text("SELECT 1 / 0"))  # Postgres's error, wrapped by SQLAlchemy
    assert await backend(db) == first  # the one pooled connection, reused every time


async def test_a_checkout_that_fails_raises_sqlalchemys_error_as_a_connection_would(settings: Settings) -> None:
    from sqlalchemy.exc import DBAPIError

    # The database does not exist: the driver's connect fails, and the phase sees SQLAlchemy's class
    # for it (what is_db_unavailable and the error handlers know), not the driver adapter's own.
    url = settings.database_url.rsplit("/", 1)[0] + "/agentchat_no_such_database"
    engine = create_engine(settings.model_copy(update={"database_url": url}))
    try:
        with pytest.raises(DBAPIError):
            async with Database(engine, Metrics()).tx():
                pass
    finally:
        await engine.dispose()


async def test_a_requests_opener_is_open_for_its_response_and_closed_after(
    served: tuple[FastAPI, Resources, httpx.AsyncClient],
) -> None:
    """The route's opener works while it answers (and is the same one for each of its uses); once
    the response is sent, opening a transaction from it raises (a turn that outlives its request
    uses its run's own)."""
    app, _, client = served
    kept: list[Transactions] = []

    async def answer(transactions: TransactionsDep, again: TransactionsDep) -> dict[str, int]:
        assert transactions is again
        kept.append(transactions)
        async with transactions() as tx:
            assert tx.driver is not None
            return {"one": (await tx.driver.fetch("SELECT 1"))[0][0]}

    app.add_api_route("/test/opener", answer)
    r = await client.get("/test/opener")
    assert r.status_code == 200, r.text
    assert r.json() == {"one": 1}
    with pytest.raises(RuntimeError, match="outside its owner's lifetime"):
        kept[0]()
