"""tested tree, sessions, four eyes

Project.staging_commit (the snapshot staging serves), Run.outputs (what a stage reported), User.disabled and
User.session_generation (sessions end on logout everywhere), Ticket.contributor_ids (four eyes).

Revision ID: 0002_integrity_sessions
Revises: 132014f2ca84
Create Date: 2026-12-04 07:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0002_integrity_sessions'
down_revision = '132014f2ca84'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('project') as batch:
        batch.add_column(sa.Column('staging_commit', sa.String(length=40), nullable=True))
    with op.batch_alter_table('run') as batch:
        batch.add_column(sa.Column('outputs', sa.JSON(), nullable=False, server_default='{}'))
    with op.batch_alter_table('user') as batch:
        batch.add_column(sa.Column('disabled', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column('session_generation', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('ticket') as batch:
        batch.add_column(sa.Column('contributor_ids', sa.JSON(), nullable=False, server_default='[]'))
    # The server defaults only fill existing rows; the models set the values from now on.
    for table, column in (('run', 'outputs'), ('user', 'disabled'), ('user', 'session_generation'),
                          ('ticket', 'contributor_ids')):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, server_default=None)


def downgrade():
    with op.batch_alter_table('ticket') as batch:
        batch.drop_column('contributor_ids')
    with op.batch_alter_table('user') as batch:
        batch.drop_column('session_generation')
        batch.drop_column('disabled')
    with op.batch_alter_table('run') as batch:
        batch.drop_column('outputs')
    with op.batch_alter_table('project') as batch:
        batch.drop_column('staging_commit')
