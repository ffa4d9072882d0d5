"""agents and clients

A conversation is bound to the agent that started it (`agent`; NULL: the default agent, as every
conversation before agents were configurable), may be keyed by a client's own id for it
(`external_id`, e.g. Open WebUI's chat id, unique per owner) and record the client's end user
(`end_user`) and request fields (`attributes`, e.g. OpenAI conversation metadata). A key may be
limited to some agents (`api_keys.agents`; NULL: all of them).

Revision ID: 7b2e4d6f8a10
Revises: 3c1d7e9a4f20
Create Date: 2026-12-07 08:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "7b2e4d6f8a10"
down_revision: str | Sequence[str] | None = "3c1d7e9a4f20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
HAS_EXTERNAL_ID = sa.text("external_id IS NOT NULL")
HAS_END_USER = sa.text("end_user IS NOT NULL")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("external_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("end_user", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("attributes", JSON, nullable=True))
        batch_op.create_index(
            "ix_conversations_owner_external_id",
            ["owner_id", "external_id"],
            unique=True,
            postgresql_where=HAS_EXTERNAL_ID,
            sqlite_where=HAS_EXTERNAL_ID,
        )
        batch_op.create_index(
            "ix_conversations_owner_end_user",
            ["owner_id", "end_user", "updated_at", "id"],
            unique=False,
            postgresql_where=HAS_END_USER,
            sqlite_where=HAS_END_USER,
        )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agents", JSON, nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("agents")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_owner_end_user", postgresql_where=HAS_END_USER, sqlite_where=HAS_END_USER)
        batch_op.drop_index(
            "ix_conversations_owner_external_id", postgresql_where=HAS_EXTERNAL_ID, sqlite_where=HAS_EXTERNAL_ID
        )
        batch_op.drop_column("attributes")
        batch_op.drop_column("end_user")
        batch_op.drop_column("external_id")
        batch_op.drop_column("agent")
