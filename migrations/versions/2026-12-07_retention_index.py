"""retention index

CONVERSATION_RETENTION_DAYS' sweep deletes the conversations untouched the longest, a small batch
at a time: an index on conversations.updated_at finds them without a scan.

Revision ID: 6f8b0d2e4a57
Revises: 5e7a9c1b3d40
Create Date: 2026-12-07 11:00:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "6f8b0d2e4a57"
down_revision: str | Sequence[str] | None = "5e7a9c1b3d40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index("ix_conversations_updated_at", ["updated_at"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_updated_at")
