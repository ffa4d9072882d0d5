"""Alembic, async: the same migrations run on Postgres (asyncpg) and SQLite (aiosqlite)."""

import asyncio
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from app.core.config import load_settings
from app.core.db import create_engine
from app.models import Base
from app.models.base import UTCDateTime

target_metadata = Base.metadata

if context.config.config_file_name is not None and not context.config.attributes.get("keep_logging"):
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)


def _render_item(type_: str, obj: Any, _: AutogenContext) -> str | Literal[False]:
    # Our UTC-normalising type is a plain timestamptz in the schema.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        render_as_batch=True,  # SQLite can only ALTER by copying the table
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    _configure(url=load_settings().database_url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    url = context.config.attributes.get("database_url")
    settings = load_settings()
    if url:
        settings = settings.model_copy(update={"database_url": url})
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
