"""The async engine, its ways in, and sessions. Built by the lifespan, never at import time.

A turn's phases use `Transactions`, an opener a route gets from `Depends` (app/state.py): each
`async with transactions() as tx:` is one short transaction. On Postgres it is one statement that
commits by itself (no BEGIN/COMMIT round trips, never idle in transaction), which asyncpg runs
through a connection from SQLAlchemy's pool (`AsyncEngine.raw_connection()`): the same pool and
events, without SQLAlchemy's execution layer, which costs more CPU per statement than the round
trip does. `statement()` and `transaction()` serve other one-off work; the conversation API
and tools use ORM sessions, where the unit of work earns its keep.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

from sqlalchemy import Connection, PoolProxiedConnection, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_only

from app.core.config import Settings
from app.core.errors import AppError, is_db_unavailable
from app.core.metrics import Metrics

PING_AFTER_IDLE_SECONDS = 2.0


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        engine = create_async_engine(settings.database_url, pool_pre_ping=True, hide_parameters=True)
        _tune_sqlite(engine)
        return engine
    server_settings = {
        "application_name": settings.app_name,
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(settings.db_idle_in_transaction_timeout_ms),
    }
    engine = create_async_engine(
        settings.database_url,
        pool_pre_ping=False,  # see _ping_when_idle
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=1800,
        # Bound parameters are user content (messages, system prompts): keep them out of errors.
        hide_parameters=True,
        connect_args={"server_settings": server_settings, "timeout": 5, "command_timeout": 30},
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Pre-ping, but only a connection that has sat idle: a ping costs a round trip per checkout,
    and a connection used a moment ago is as alive as a ping would show.

    A dead idle connection (server restarted, backend killed) is replaced before anyone sees it;
    one killed while busy fails that request (503), and SQLAlchemy then invalidates the whole pool.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_: Any, record: Any) -> None:
        record.info["used_at"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, __: Any) -> None:
        used_at = record.info.get("used_at")
        if used_at is None or time.monotonic() - used_at < PING_AFTER_IDLE_SECONDS:
            return  # brand new, or just used
        try:
            # One bare round trip: the adapter's own ping wraps it in BEGIN … ROLLBACK (three
            # round trips, the connection idle in transaction between them).
            await_only(dbapi_connection.driver_connection.fetchrow(";"))
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError() from exc


def instrument(engine: AsyncEngine, metrics: Metrics) -> None:
    """Count statements, real commits and pool checkouts (what the hot-path tests pin down), and
    keep the pool's high-water mark (what the fault tests bound)."""
    statements, commits, checkouts = metrics.db_statements, metrics.db_commits, metrics.db_checkouts

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _on_statement(*_: Any) -> None:
        statements.inc()

    @event.listens_for(engine.sync_engine, "commit")
    def _on_commit(conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":  # a no-op commit otherwise
            commits.inc()

    peak = 0

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(*_: Any) -> None:
        nonlocal peak
        checkouts.inc()
        checked_out = getattr(engine.pool, "checkedout", None)  # QueuePool's; not every pool has one
        if checked_out is not None and (now := checked_out()) > peak:
            peak = now
            metrics.pool_checked_out_max.set(peak)


def _is_statement_error(exc: BaseException) -> bool:
    """An error Postgres raised about the statement (a constraint, bad input): the connection is fine."""
    import asyncpg  # type: ignore[import-untyped]  # only Postgres gets here

    return isinstance(exc, asyncpg.PostgresError) and not is_db_unavailable(exc)


def _connection_is_fine(exc: BaseException) -> bool:
    """Whether a connection whose block ended with `exc` is in a known state, fit to go back to the pool:
    our own error raised between statements (a 404, a 409), or Postgres's error about a statement,
    raw or wrapped by SQLAlchemy. Anything else (cancelled mid-statement, lost) is discarded."""
    if isinstance(exc, AppError):
        return True
    if isinstance(exc, DBAPIError):
        return not exc.connection_invalidated and not is_db_unavailable(exc)
    return _is_statement_error(exc)


def _tune_sqlite(engine: AsyncEngine) -> None:
    # WAL lets readers run beside the single writer; busy_timeout queues writers instead of failing.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


class Driver:
    """A pooled Postgres connection as asyncpg sees it: written-out SQL with $n parameters, each
    statement its own transaction (nothing is begun). jsonb goes in and comes out as text."""

    __slots__ = ("_conn", "_statements")

    def __init__(self, conn: Any, statements: Any) -> None:
        self._conn, self._statements = conn, statements

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self._statements.inc()
        return await self._conn.fetch(sql, *args)  # type: ignore[no-any-return]

    async def execute(self, sql: str, *args: Any) -> str:
        self._statements.inc()
        return await self._conn.execute(sql, *args)  # type: ignore[no-any-return]


class Tx:
    """One short transaction. On Postgres, a pooled connection whose every statement is its own
    transaction (no BEGIN/COMMIT round trips): `driver` for SQL that asyncpg runs itself, and `conn`
    (SQLAlchemy Core, autocommitting) over the same connection, built the first time it is used. On
    SQLite (`driver` None), `conn` inside BEGIN … COMMIT."""

    __slots__ = ("_conn", "_core", "driver")

    def __init__(
        self,
        conn: AsyncConnection | None,
        driver: Driver | None,
        core: Callable[[], AsyncConnection] | None = None,
    ) -> None:
        self._conn, self.driver, self._core = conn, driver, core

    @property
    def conn(self) -> AsyncConnection:
        if self._conn is None:
            assert self._core is not None
            self._conn = self._core()
        return self._conn


REQUEST_OPENER = "agentchat.transactions"  # a request's opener, in its ASGI scope


class Transactions:
    """Opens short transactions: `async with transactions() as tx:`, one per phase of a turn.

    Its owner holds it open for as long as it may open them: a request (the whole response,
    streaming included: `for_request`, closed by `end_request`), a run for a turn that outlives its
    request (`async with`). Opening one outside that lifetime is a bug, and raises.
    """

    __slots__ = ("_open", "db")

    def __init__(self, db: Database) -> None:
        self.db, self._open = db, False

    @classmethod
    def for_request(cls, scope: MutableMapping[str, Any], db: Database) -> Transactions:
        """The request's opener, open until `end_request` (the request's middleware, once the
        response has been sent)."""
        opener: Transactions | None = scope.get(REQUEST_OPENER)
        if opener is None:
            opener = scope[REQUEST_OPENER] = cls(db)
            opener._open = True
        return opener

    @staticmethod
    def end_request(scope: MutableMapping[str, Any]) -> None:
        opener: Transactions | None = scope.get(REQUEST_OPENER)
        if opener is not None:
            opener._open = False

    async def __aenter__(self) -> Transactions:
        self._open = True
        return self

    async def __aexit__(self, *_: object) -> None:
        self._open = False

    def __call__(self) -> AbstractAsyncContextManager[Tx]:
        """One short transaction of a turn's phase (see `Database.tx`)."""
        self._check()
        return self.db.tx()

    def statement(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for work that is one statement, which commits by itself."""
        self._check()
        return self.db.statement()

    def atomic(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """Several statements, committed together when the block ends, rolled back on any error."""
        self._check()
        return self.db.transaction()

    def _check(self) -> None:
        if not self._open:
            raise RuntimeError("a transaction was opened outside its owner's lifetime")


class Database:
    """Connections for the hot path, each checkout timed (agentchat_db_pool_wait_seconds)."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._driver_error: Any = engine.dialect.loaded_dbapi.Error  # the adapter's base class (PEP 249)
        self._pool_wait = metrics.db_pool_wait
        self._statements = metrics.db_statements

    def has_free_connection(self) -> bool:
        """Whether a checkout now would get a connection without waiting for another to come back:
        an idle one, or a pool slot not yet opened (overflow aside: it is for bursts)."""
        pool = self.engine.sync_engine.pool
        checked_in, checked_out, size = (getattr(pool, name, None) for name in ("checkedin", "checkedout", "size"))
        if checked_in is None or checked_out is None or size is None:  # not a QueuePool
            return False
        return bool(checked_in() > 0 or checked_out() < size())

    def transactions(self) -> Transactions:
        """The provider of transaction openers: one per request (app/state.py) or per run."""
        return Transactions(self)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        if not self.is_postgres:
            async with self.transaction() as conn:
                yield Tx(conn, None)
            return
        started = time.perf_counter()
        # The pool's connection itself, not a SQLAlchemy Connection around it: a phase's SQL goes
        # through asyncpg, and a Connection's set-up and close (events, execution options, the
        # autocommit characteristic set and reset) double a phase's checkout (52 → 24 µs of CPU,
        # `python -m bench.micro`).
        # Closed by hand, not `async with`: close() here finishes without yielding.
        try:
            pooled = await self.engine.raw_connection()
        except self._driver_error as exc:
            # As a Connection's checkout raises it: SQLAlchemy's class for it (OperationalError,
            # InterfaceError…), which is_db_unavailable knows, not the driver adapter's own.
            dialect = self.engine.dialect
            raise DBAPIError.instance(
                None, None, exc, self._driver_error, hide_parameters=True,
                connection_invalidated=dialect.is_disconnect(exc, None, None), dialect=dialect,
            ) from exc  # fmt: skip
        self._pool_wait.observe(time.perf_counter() - started)
        tx = Tx(None, Driver(pooled.driver_connection, self._statements), partial(self._core, pooled))
        try:
            yield tx
        except BaseException as exc:
            if not _connection_is_fine(exc):
                # Failed or cancelled mid-statement, its state unknown: terminated (no await, so
                # even under cancellation) and its pool slot given back, never reused.
                error = exc if isinstance(exc, Exception) else None
                if tx._conn is not None:
                    tx._conn.sync_connection.invalidate(error)  # type: ignore[union-attr]
                else:
                    pooled.invalidate(error)
            raise
        finally:
            if tx._conn is not None:
                await tx._conn.close()  # gives the pooled connection back, its characteristics reset
            else:
                pooled.close()

    def _core(self, pooled: PoolProxiedConnection) -> AsyncConnection:
        """SQLAlchemy Core over a checked-out connection, autocommitting like the asyncpg statements."""
        return AsyncConnection(self._autocommit, Connection(self._autocommit.sync_engine, connection=pooled))

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one statement, which commits by itself: no BEGIN, no COMMIT."""
        started = time.perf_counter()
        async with self._autocommit.connect() as conn:
            self._pool_wait.observe(time.perf_counter() - started)
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """Several statements, committed together when the block ends, rolled back on any error."""
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            self._pool_wait.observe(time.perf_counter() - started)
            async with conn.begin():
                yield conn
