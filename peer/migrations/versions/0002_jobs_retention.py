"""jobs.finished_at and jobs.pinned: retention (peer/retention.py)

``finished_at``: when every proc of the job had reached a final state (the time of the last final
event in its event log), written by the retention sweeper; NULL while the job may still change.
Existing rows start NULL: the sweeper's first round reads each job's event log and fills it for the
jobs that have finished (from the log's event times, so a job that finished long ago expires at once
after the upgrade, as it would have).  ``pinned``: the user's "keep it"; existing jobs are not pinned.

Revision ID: 0002_jobs_retention
Revises: 0001_baseline
Create Date: 2026-12-07 06:25:16.587946

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002_jobs_retention'
down_revision: Union[str, Sequence[str], None] = '0001_baseline'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add jobs.finished_at (indexed) and jobs.pinned (false for every existing job).

    One batch block per column: two columns added in one SQLite batch (a table copy) make Alembic's
    column ordering fail with CircularDependencyError('pinned', 'finished_at').
    """
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('finished_at', sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_finished_at'), ['finished_at'], unique=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        # sa.false(): "false" on PostgreSQL (a boolean column refuses the integer 0), 0 on SQLite
        batch_op.add_column(sa.Column('pinned', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    """Drop the two columns (downgrades are not supported by the runner; this is for Alembic's own tools)."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_finished_at'))
        batch_op.drop_column('pinned')
        batch_op.drop_column('finished_at')
