"""jobs.queue and jobs.priority (routing to GPU workers, priorities) with an index for queue_position

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Jobs from before have no queue (null): they were sent to the plain training queue, and are counted together.
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch_op.create_index("ix_jobs_status_queue_priority", ["status", "queue", "priority", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_status_queue_priority")
        batch_op.drop_column("priority")
        batch_op.drop_column("queue")
