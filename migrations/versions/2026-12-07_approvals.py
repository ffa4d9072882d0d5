"""approvals

An answer may pause until a person decides its pending tool calls: its status can be
`awaiting_approval` (17 characters, so the column widens), and the sweep of expired pauses reads
them by age through a partial index.

Revision ID: 8c3f5a7b9d21
Revises: 7b2e4d6f8a10
Create Date: 2026-12-07 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "8c3f5a7b9d21"
down_revision: str | Sequence[str] | None = "7b2e4d6f8a10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AWAITING = sa.text("status = 'awaiting_approval'")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.alter_column("status", existing_type=sa.String(length=16), type_=sa.String(length=32))
        batch_op.create_index(
            "ix_messages_awaiting_approval",
            ["updated_at"],
            unique=False,
            postgresql_where=AWAITING,
            sqlite_where=AWAITING,
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_awaiting_approval", postgresql_where=AWAITING, sqlite_where=AWAITING)
        batch_op.alter_column("status", existing_type=sa.String(length=32), type_=sa.String(length=16))
