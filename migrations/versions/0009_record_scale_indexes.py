"""Indexes for a large record: a tenant's queue line, its jobs by status, unsent queued jobs, curves read from an index

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 14:00:00

With 10,000 queued jobs and 1,000,000 metric points on record (docs/operations.md, Scale):
- ix_jobs_queue_line (tenant, status, queue, priority DESC, created_at, id) is the order a tenant's queued jobs
  leave a queue in: a queue position is one count over it, a page's positions one ordered scan. It replaces
  ix_jobs_status_queue_priority, which had no tenant and so read every tenant's queued rows to count one's.
- ix_jobs_tenant_status_created (tenant, status, created_at, id): GET /jobs?status=... newest first, a page read
  straight from the index instead of skipping the tenant's other jobs.
- ix_jobs_status_enqueued (status, enqueued_at): the reconciler's "queued and never sent" without reading every
  queued row.
- ix_metric_points_curve (job_id, split, step, loss): a curve's downsampling reads (step, loss) from the index
  alone, never the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_jobs_status_queue_priority", table_name="jobs")
    op.create_index(
        "ix_jobs_queue_line", "jobs", ["tenant", "status", "queue", sa.text("priority DESC"), "created_at", "id"]
    )
    op.create_index("ix_jobs_tenant_status_created", "jobs", ["tenant", "status", "created_at", "id"])
    op.create_index("ix_jobs_status_enqueued", "jobs", ["status", "enqueued_at"])
    op.create_index("ix_metric_points_curve", "metric_points", ["job_id", "split", "step", "loss"])


def downgrade() -> None:
    op.drop_index("ix_metric_points_curve", table_name="metric_points")
    op.drop_index("ix_jobs_status_enqueued", table_name="jobs")
    op.drop_index("ix_jobs_tenant_status_created", table_name="jobs")
    op.drop_index("ix_jobs_queue_line", table_name="jobs")
    op.create_index("ix_jobs_status_queue_priority", "jobs", ["status", "queue", "priority", "created_at"])
