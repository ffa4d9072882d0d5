"""message parents

Every message names the message it follows (`parent_id`): an edited message or a regenerated
answer is a sibling of the one it replaces, and a conversation is a tree of branches. Existing
conversations are one branch each: a message's parent is the message before it (by id, compaction
rows aside), and a compaction row's is the message before it too.

Revision ID: 2d4f6a8c0e13
Revises: 4b6d8f0a2c31
Create Date: 2026-12-07 13:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "2d4f6a8c0e13"
down_revision: str | Sequence[str] | None = "4b6d8f0a2c31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The previous message of the same conversation, compaction rows aside: one indexed lookup per row
# (ix_messages_conversation_order), on Postgres and SQLite alike.
_BACKFILL = """
UPDATE messages SET parent_id = (
    SELECT earlier.id FROM messages AS earlier
    WHERE earlier.conversation_id = messages.conversation_id
        AND earlier.id < messages.id
        AND earlier.role <> 'summary'
    ORDER BY earlier.id DESC
    LIMIT 1
)
"""


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.execute(_BACKFILL)


def downgrade() -> None:
    """Downgrade schema (branches flatten: every message stays, in id order)."""
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("parent_id")
