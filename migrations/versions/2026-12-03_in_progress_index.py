"""in progress index

The periodic sweep of answers left `in_progress` by a dead process reads them by age; a partial
index keeps that a read of a handful of rows instead of a scan of every message.

Revision ID: 3c1d7e9a4f20
Revises: 9a7f3c2e1b40
Create Date: 2026-12-03 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "3c1d7e9a4f20"
down_revision: str | Sequence[str] | None = "9a7f3c2e1b40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_PROGRESS = sa.text("status = 'in_progress'")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_in_progress",
            ["created_at"],
            unique=False,
            postgresql_where=IN_PROGRESS,
            sqlite_where=IN_PROGRESS,
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_in_progress", postgresql_where=IN_PROGRESS, sqlite_where=IN_PROGRESS)
