"""queued message blocks

A queued message keeps its blocks (its attachments' references, then its text): a replica that
adopts it after its own replica stopped answers what the client sent, not its text alone.

Revision ID: 3c5e7a9b1d24
Revises: 2d4f6a8c0e13
Create Date: 2026-12-07 18:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "3c5e7a9b1d24"
down_revision: str | Sequence[str] | None = "2d4f6a8c0e13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("queued_messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "blocks",
                sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    """Downgrade schema (queued messages keep their text; their attachments are dropped)."""
    with op.batch_alter_table("queued_messages", schema=None) as batch_op:
        batch_op.drop_column("blocks")
