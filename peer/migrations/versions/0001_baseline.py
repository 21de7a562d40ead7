"""baseline: the schema of the last release without migrations

Exactly the tables that ``Base.metadata.create_all`` (peer/models.py, peer/acl.py) and
``BrokerBase.metadata.create_all`` (broker/models.py) made before there were migrations.  A database
that release wrote (tables, no ``alembic_version``) is stamped with this revision at start
(peer/migrations/runner.py); never change it: add a revision after it.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-07 05:24:47.273524

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001_baseline'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Create every table of the release before migrations."""
    op.create_table('acl_rules',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('effect', sa.String(length=10), nullable=False),
    sa.Column('group', sa.String(length=20), nullable=False),
    sa.Column('match', sa.String(length=20), nullable=False),
    sa.Column('value', sa.String(length=1024), nullable=False),
    sa.Column('created_by', sa.String(length=1024), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_acl_rules_position', 'acl_rules', ['position'], unique=False)

    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('dn', sa.String(length=500), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_events_action', 'audit_events', ['action'], unique=False)
    op.create_index('ix_audit_events_at', 'audit_events', ['at'], unique=False)

    op.create_table('counters',
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('file_digests',
    sa.Column('path', sa.String(length=1000), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('path')
    )
    op.create_table('idempotency_keys',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('owner', sa.String(length=500), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=200), nullable=True),
    sa.Column('target', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key', 'owner')
    )
    op.create_table('issued_tokens',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('dn', sa.String(length=500), nullable=False),
    sa.Column('vo', sa.String(length=200), nullable=True),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('device', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('jti')
    )
    op.create_index('ix_issued_tokens_dn', 'issued_tokens', ['dn'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('owner', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('executor', sa.String(length=20), nullable=False),
    sa.Column('executable_name', sa.String(length=255), nullable=False),
    sa.Column('submit_name', sa.String(length=255), nullable=False),
    sa.Column('submit_text', sa.Text(), nullable=False),
    sa.Column('input_names', sa.JSON(), nullable=False),
    sa.Column('entry_peer', sa.String(length=200), nullable=False),
    sa.Column('origin_key', sa.String(length=200), nullable=False),
    sa.Column('warnings', sa.JSON(), nullable=False),
    sa.Column('reader_state', sa.JSON(), nullable=True),
    sa.Column('status_version', sa.Integer(), nullable=False),
    sa.Column('removed_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('entry_peer', 'origin_key', name='uq_job_origin')
    )
    op.create_table('members',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('url', sa.String(length=500), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('cert', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('resumable_uploads',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=500), nullable=False),
    sa.Column('filename', sa.String(length=1000), nullable=False),
    sa.Column('length', sa.BigInteger(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('upload_metadata', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('path', sa.String(length=1000), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_resumable_uploads_expires_at', 'resumable_uploads', ['expires_at'], unique=False)
    op.create_index('ix_resumable_uploads_owner', 'resumable_uploads', ['owner'], unique=False)

    op.create_table('revoked_tokens',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('jti')
    )
    op.create_table('settings',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('procs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=200), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('input_name', sa.String(length=255), nullable=False),
    sa.Column('executor', sa.String(length=20), nullable=False),
    sa.Column('cluster', sa.Integer(), nullable=False),
    sa.Column('proc', sa.Integer(), nullable=False),
    sa.Column('local_state', sa.String(length=20), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('pid_started', sa.Float(), nullable=True),
    sa.Column('restarts', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cluster', 'proc', 'executor', name='uq_cluster_proc')
    )
    op.create_index('ix_procs_job_id', 'procs', ['job_id'], unique=False)
    op.create_index('ix_procs_local_state', 'procs', ['local_state'], unique=False)

    op.create_table('broker_link_rates',
    sa.Column('src', sa.String(length=200), nullable=False),
    sa.Column('dst', sa.String(length=200), nullable=False),
    sa.Column('bytes_per_second', sa.Float(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('src', 'dst')
    )
    op.create_table('broker_load',
    sa.Column('peer', sa.String(length=200), nullable=False),
    sa.Column('url', sa.String(length=500), nullable=False),
    sa.Column('coefficient', sa.Float(), nullable=False),
    sa.Column('paper_coefficient', sa.Float(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('pool', sa.JSON(), nullable=True),
    sa.Column('sampled_at', sa.Float(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('interval', sa.Float(), nullable=False),
    sa.Column('in_flight', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('peer')
    )
    op.create_table('broker_peer_health',
    sa.Column('peer', sa.String(length=200), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_failure_at', sa.Float(), nullable=True),
    sa.Column('banned_until', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('peer')
    )
    op.create_table('broker_placements',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_key', sa.String(length=200), nullable=False),
    sa.Column('chosen', sa.String(length=200), nullable=False),
    sa.Column('ranking', sa.JSON(), nullable=False),
    sa.Column('policy', sa.String(length=50), nullable=False),
    sa.Column('decided_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('broker_registrations',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('url', sa.String(length=500), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('registered_at', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=True),
    sa.Column('cert', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    """Drop every table (an empty database; downgrades are not supported beyond this)."""
    op.drop_table('broker_registrations')
    op.drop_table('broker_placements')
    op.drop_table('broker_peer_health')
    op.drop_table('broker_load')
    op.drop_table('broker_link_rates')
    op.drop_table('procs')
    op.drop_table('settings')
    op.drop_table('revoked_tokens')
    op.drop_table('resumable_uploads')
    op.drop_table('members')
    op.drop_table('jobs')
    op.drop_table('issued_tokens')
    op.drop_table('idempotency_keys')
    op.drop_table('file_digests')
    op.drop_table('counters')
    op.drop_table('audit_events')
    op.drop_table('acl_rules')
