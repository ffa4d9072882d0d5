"""`python -m app.cli create-key --name NAME | list-keys | revoke-key ID_OR_PREFIX | first-run --url URL`.

create-key prints the new key as the last line of stdout, so scripts can take `| tail -n1`.
first-run (what `make run` calls) creates a first key only on the embedded SQLite database and
only while it has no keys at all; otherwise it says how to make one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from app.auth.repository import AmbiguousPrefix, ApiKeyRepository
from app.core.config import load_settings
from app.core.db import create_engine, create_sessionmaker


async def _with_repo(action: Callable[[ApiKeyRepository], Awaitable[int]]) -> int:
    settings = load_settings()
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            return await action(ApiKeyRepository(session))
    finally:
        await engine.dispose()


async def create_key(repo: ApiKeyRepository, name: str, agents: list[str] | None = None) -> int:
    row, key = await repo.create(name, agents)
    limited = f", limited to the agents {', '.join(agents)}" if agents is not None else ""
    print(f"Created key {row.prefix} ({row.id}) named {row.name!r}{limited}. It is shown only once:")  # noqa: T201
    print(key)  # noqa: T201
    return 0


async def list_keys(repo: ApiKeyRepository) -> int:
    for row in await repo.list():
        state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
        agents = ",".join(row.agents) if row.agents is not None else "all agents"
        print(f"{row.id}  {row.prefix}  {state:<18}  {row.name}  ({agents})")  # noqa: T201
    return 0


async def revoke_key(repo: ApiKeyRepository, ident: str) -> int:
    try:
        revoked = await repo.revoke(ident)
    except AmbiguousPrefix as exc:
        ids = "\n".join(f"  {key_id}" for key_id in exc.key_ids)
        print(f"{exc}; none revoked. Revoke one by id:\n{ids}", file=sys.stderr)  # noqa: T201
        return 1
    if revoked:
        print(f"Revoked {ident}.")  # noqa: T201
        return 0
    print(f"No active key {ident}.", file=sys.stderr)  # noqa: T201
    return 1


async def first_run(url: str) -> int:
    settings = load_settings()
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            repo = ApiKeyRepository(session)
            # Never on Postgres (a shared deployment mints keys deliberately), never over existing keys.
            key = None if not settings.is_sqlite or await repo.list() else (await repo.create("first-run"))[1]
    finally:
        await engine.dispose()
    if key is None:
        print(f"\n  agentchat is starting on {url}")  # noqa: T201
        print("  Create an API key with: .venv/bin/python -m app.cli create-key --name me\n")  # noqa: T201
        return 0
    print(  # noqa: T201
        f"""
  agentchat is starting on {url}
  Your first API key (shown once; only its hash is stored):

      {key}

  Open the playground, already connected (the key travels in the #fragment, never to a server):

      {url}/#key={key}

  Or from a terminal:
      curl -s {url}/chat -H "Authorization: Bearer {key}" \\
           -H 'content-type: application/json' -d '{{"message": "what is 12*7?"}}'
"""
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description="Manage agentchat API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-key", help="create a key and print it (last line of stdout)")
    create.add_argument("--name", required=True)
    create.add_argument("--agents", help="comma-separated: the agents the key may use (default: all)")
    commands.add_parser("list-keys", help="list keys (never the secrets)")
    revoke = commands.add_parser("revoke-key", help="revoke a key by id, or by prefix if only one active key has it")
    revoke.add_argument("key", metavar="ID_OR_PREFIX")
    first = commands.add_parser("first-run", help="on an empty embedded database: create a key, print it once")
    first.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    if args.command == "first-run":
        return asyncio.run(first_run(args.url))
    if args.command == "create-key":
        agents = None if args.agents is None else [a.strip() for a in args.agents.split(",") if a.strip()]
        if agents is not None:
            configured = load_settings().agent_set
            unknown = [a for a in agents if all(c.name != a for c in configured.agents)]
            if unknown or not agents:
                known = ", ".join(c.name for c in configured.agents)
                problem = f"--agents: unknown agent(s) {', '.join(unknown) or '(none given)'} (known: {known})"
                print(problem, file=sys.stderr)  # noqa: T201
                return 2
        return asyncio.run(_with_repo(lambda repo: create_key(repo, args.name, agents)))
    if args.command == "list-keys":
        return asyncio.run(_with_repo(list_keys))
    return asyncio.run(_with_repo(lambda repo: revoke_key(repo, args.key)))


if __name__ == "__main__":
    sys.exit(main())
