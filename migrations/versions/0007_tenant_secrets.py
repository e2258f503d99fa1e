"""the tenant_secrets table (per-tenant webhook signing secrets and Hub tokens)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_secrets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "kind"),
    )
    op.create_index("ix_tenant_secrets_tenant", "tenant_secrets", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_tenant_secrets_tenant", table_name="tenant_secrets")
    op.drop_table("tenant_secrets")
