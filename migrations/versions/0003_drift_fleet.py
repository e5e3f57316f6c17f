"""drift and fleet state

Run.overwrite_drift (a retry that overwrites hand-made changes) and host_state (what each host serves, as
the last verify or release found it).

Revision ID: 0003_drift_fleet
Revises: 0002_integrity_sessions
Create Date: 2026-12-04 07:31:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0003_drift_fleet'
down_revision = '0002_integrity_sessions'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('run') as batch:
        batch.add_column(sa.Column('overwrite_drift', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('run') as batch:
        batch.alter_column('overwrite_drift', server_default=None)
    op.create_table(
        'host_state',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('project_id', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('version', sa.Integer(), nullable=True),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('drift', sa.JSON(), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('checked_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['project.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('project_id', 'host'),
    )
    with op.batch_alter_table('host_state') as batch:
        batch.create_index(batch.f('ix_host_state_project_id'), ['project_id'], unique=False)


def downgrade():
    with op.batch_alter_table('host_state') as batch:
        batch.drop_index(batch.f('ix_host_state_project_id'))
    op.drop_table('host_state')
    with op.batch_alter_table('run') as batch:
        batch.drop_column('overwrite_drift')
