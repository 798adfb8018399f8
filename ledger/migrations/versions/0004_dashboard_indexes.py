"""dashboard: indexes for the invoice list, the failed payments of the last days and the trial balance

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:00:00.000000
"""

from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The trial balance (the dashboard's overview) reads only this index, not the postings table.
    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.drop_index('ix_postings_account_currency')
        batch_op.create_index('ix_postings_balance', ['account', 'currency', 'direction', 'amount'], unique=False)

    with op.batch_alter_table('invoice_positions', schema=None) as batch_op:
        batch_op.create_index('ix_invoice_positions_created_invoice_id', ['created', 'invoice_id'], unique=False)
        batch_op.create_index('ix_invoice_positions_status_created', ['status', 'created', 'invoice_id'],
                              unique=False)

    with op.batch_alter_table('received_events', schema=None) as batch_op:
        batch_op.create_index('ix_received_events_type_received_at', ['type', 'received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('received_events', schema=None) as batch_op:
        batch_op.drop_index('ix_received_events_type_received_at')

    with op.batch_alter_table('invoice_positions', schema=None) as batch_op:
        batch_op.drop_index('ix_invoice_positions_status_created')
        batch_op.drop_index('ix_invoice_positions_created_invoice_id')

    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.drop_index('ix_postings_balance')
        batch_op.create_index('ix_postings_account_currency', ['account', 'currency'], unique=False)
