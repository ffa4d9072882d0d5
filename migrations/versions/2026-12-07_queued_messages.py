"""queued messages

Messages sent with `multitask: "enqueue"` while another turn of their conversation runs: stored at
once, answered in arrival order (their UUIDv7 ids), then removed when their turn stores them as the
conversation's user message.

Revision ID: 4b6d8f0a2c31
Revises: 7a9c1e3b5d68
Create Date: 2026-12-07 12:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "4b6d8f0a2c31"
down_revision: str | Sequence[str] | None = "7a9c1e3b5d68"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "queued_messages",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_queued_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["api_keys.id"], name=op.f("fk_queued_messages_owner_id_api_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queued_messages")),
    )
    op.create_index("ix_queued_messages_conversation_id", "queued_messages", ["conversation_id", "id"], unique=False)


def downgrade() -> None:
    """Downgrade schema (messages still queued are dropped with their table)."""
    op.drop_index("ix_queued_messages_conversation_id", table_name="queued_messages")
    op.drop_table("queued_messages")
