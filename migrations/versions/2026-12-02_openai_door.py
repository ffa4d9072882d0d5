"""openai door

An answer given through the OpenAI-compatible door (/v1) keeps a key of the exchange up to it (so
a client's next call, which sends the whole history back, lands in the same conversation) and the
request fields the door shows again when the response is retrieved.

Revision ID: 9a7f3c2e1b40
Revises: 5e0c8a41d2b7
Create Date: 2026-12-02 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "9a7f3c2e1b40"
down_revision: str | Sequence[str] | None = "5e0c8a41d2b7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("history_key", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("attributes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True)
        )
        batch_op.create_index(
            "ix_messages_history_key",
            ["history_key"],
            unique=False,
            postgresql_where=sa.text("history_key IS NOT NULL"),
            sqlite_where=sa.text("history_key IS NOT NULL"),
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_messages_history_key",
            postgresql_where=sa.text("history_key IS NOT NULL"),
            sqlite_where=sa.text("history_key IS NOT NULL"),
        )
        batch_op.drop_column("attributes")
        batch_op.drop_column("history_key")
