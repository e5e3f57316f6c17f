"""languages, worker pools, list indexes

user.language and user.timezone (page language and time zone), project.queue (its worker pool), run.worker
(the machine that claimed it), and composite indexes for paged lists (newest first per project/state/author).

Revision ID: 0006_scale_i18n
Revises: 0005_notify_ldap
Create Date: 2026-12-04 08:40:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0006_scale_i18n'
down_revision = '0005_notify_ldap'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('user') as batch:
        batch.add_column(sa.Column('language', sa.String(length=16), nullable=False, server_default=''))
        batch.add_column(sa.Column('timezone', sa.String(length=64), nullable=False, server_default=''))
    with op.batch_alter_table('project') as batch:
        batch.add_column(sa.Column('queue', sa.String(length=64), nullable=False, server_default='ferry'))
    with op.batch_alter_table('run') as batch:
        batch.add_column(sa.Column('worker', sa.String(length=255), nullable=False, server_default=''))
        batch.create_index('ix_run_project_id_id', ['project_id', 'id'], unique=False)
    with op.batch_alter_table('ticket') as batch:
        batch.create_index('ix_ticket_project_state_id', ['project_id', 'state', 'id'], unique=False)
        batch.create_index('ix_ticket_state_id', ['state', 'id'], unique=False)
        batch.create_index('ix_ticket_author_id_id', ['author_id', 'id'], unique=False)


def downgrade():
    with op.batch_alter_table('ticket') as batch:
        batch.drop_index('ix_ticket_author_id_id')
        batch.drop_index('ix_ticket_state_id')
        batch.drop_index('ix_ticket_project_state_id')
    with op.batch_alter_table('run') as batch:
        batch.drop_index('ix_run_project_id_id')
        batch.drop_column('worker')
    with op.batch_alter_table('project') as batch:
        batch.drop_column('queue')
    with op.batch_alter_table('user') as batch:
        batch.drop_column('timezone')
        batch.drop_column('language')
