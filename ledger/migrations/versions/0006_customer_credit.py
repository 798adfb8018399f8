"""customer credit: the credit VINR applied to each invoice (appliedBalance)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 09:00:00.000000

Entries posted under the old void rule (a voided invoice kept what it had collected as revenue)
are not touched: the next reconciliation finds each such position (`ledger.audit.outdated`) and
posts the entries that move it to the current rule, and `vinr-recon db check` names them until then.
"""

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('invoice_positions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('applied_balance', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('invoice_positions', schema=None) as batch_op:
        batch_op.drop_column('applied_balance')
