"""message parents

Every message names the message it follows (`parent_id`): an edited message or a regenerated
answer is a sibling of the one it replaces, and a conversation is a tree of branches.

No backfill: a NULL parent reads as "the message before it, by id, compaction rows aside"
(app/conversations/branches.py `parents`), which is what every conversation was before branches.
So the column is added without a table rewrite or a long lock, and a replica still running the
previous code during a rolling deploy (it writes no parent) keeps its conversations whole.

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


def upgrade() -> None:
    """Upgrade schema (a nullable column: on Postgres, a catalog change only)."""
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    """Downgrade schema (branches flatten: every message stays, in id order)."""
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("parent_id")
