"""exports.options and exports.result: a Hub export's target (repo_id, private, merged, revision) and its commit

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for the merged exports recorded before: they have no options and their result is the `merged` artifact.
    op.add_column("exports", sa.Column("options", sa.JSON(), nullable=True))
    op.add_column("exports", sa.Column("result", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.drop_column("result")
        batch.drop_column("options")
