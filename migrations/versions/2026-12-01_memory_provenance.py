"""memory provenance

Each memory records the conversation and assistant message that wrote it, and whether untrusted
tool output had been read in that turn before it was written. Memories written before this
migration have no provenance and count as trusted (untrusted_context false).

Revision ID: 5e0c8a41d2b7
Revises: 7db1fbc05fab
Create Date: 2026-12-01 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5e0c8a41d2b7"
down_revision: str | Sequence[str] | None = "7db1fbc05fab"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("memories", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conversation_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("message_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("untrusted_context", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("memories", schema=None) as batch_op:
        batch_op.drop_column("untrusted_context")
        batch_op.drop_column("message_id")
        batch_op.drop_column("conversation_id")
