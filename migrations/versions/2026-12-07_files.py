"""files

Uploaded files (issue #29): `files` holds each upload's metadata, owner-scoped; `file_blobs` the
bytes when the database is the storage, once per owner and SHA-256.

Revision ID: 9d4e6f8a0b32
Revises: 8c3f5a7b9d21
Create Date: 2026-12-07 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "9d4e6f8a0b32"
down_revision: str | Sequence[str] | None = "8c3f5a7b9d21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "files",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["api_keys.id"], name=op.f("fk_files_owner_id_api_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    op.create_index("ix_files_owner_recent", "files", ["owner_id", "id"], unique=False)
    op.create_index("ix_files_owner_sha256", "files", ["owner_id", "sha256"], unique=False)
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


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("file_blobs")
    op.drop_index("ix_files_owner_sha256", table_name="files")
    op.drop_index("ix_files_owner_recent", table_name="files")
    op.drop_table("files")
