"""file chunks

The database storage of files keeps their bytes in 1 MiB rows (`file_chunks`, in order by `seq`)
instead of one value per file (`file_blobs`), so an upload is written and a download read a chunk at
a time: a file is never held whole in memory, nor sent as one parameter. Nothing is carried over:
file_blobs came in with 9d4e6f8a0b32 today, on no deployed database.

Revision ID: 7a9c1e3b5d68
Revises: 6f8b0d2e4a57
Create Date: 2026-12-07 11:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "7a9c1e3b5d68"
down_revision: str | Sequence[str] | None = "6f8b0d2e4a57"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _blobs() -> None:
    op.create_table(
        "file_blobs",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["api_keys.id"], name=op.f("fk_file_blobs_owner_id_api_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("owner_id", "sha256", name=op.f("pk_file_blobs")),
    )


def upgrade() -> None:
    """Upgrade schema."""
    op.drop_table("file_blobs")
    op.create_table(
        "file_chunks",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["api_keys.id"], name=op.f("fk_file_chunks_owner_id_api_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("owner_id", "sha256", "seq", name=op.f("pk_file_chunks")),
    )


def downgrade() -> None:
    """Downgrade schema (the chunks' files lose their bytes, as they would with their table)."""
    op.drop_table("file_chunks")
    _blobs()
