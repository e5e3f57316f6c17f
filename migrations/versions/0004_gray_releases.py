"""gray releases

Project settings for batches, the health gate and pauses between batches.

Revision ID: 0004_gray_releases
Revises: 0003_drift_fleet
Create Date: 2026-12-04 08:20:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0004_gray_releases'
down_revision = '0003_drift_fleet'
branch_labels = None
depends_on = None

COLUMNS = [
    ('batches', sa.String(length=128), ''),
    ('batch_pause', sa.String(length=16), 'auto'),
    ('health_url', sa.String(length=1024), ''),
    ('health_expect', sa.String(length=64), '2xx'),
    ('health_body', sa.String(length=255), ''),
    ('health_retries', sa.Integer(), '3'),
    ('health_interval', sa.Integer(), '2'),
    ('health_playbook', sa.String(length=1024), ''),
]


def upgrade():
    with op.batch_alter_table('project') as batch:
        for name, type_, default in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=False, server_default=default))
    with op.batch_alter_table('project') as batch:
        for name, _, _ in COLUMNS:
            batch.alter_column(name, server_default=None)


def downgrade():
    with op.batch_alter_table('project') as batch:
        for name, _, _ in reversed(COLUMNS):
            batch.drop_column(name)
