"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
<%
    def quoted(value):
        # repr() with the double quotes ruff format wants
        if isinstance(value, str):
            return '"%s"' % value
        if isinstance(value, (tuple, list)):
            items = ", ".join(quoted(v) for v in value)
            return "(" + items + ("," if len(value) == 1 else "") + ")"
        return repr(value)
%>\
revision: str = ${quoted(up_revision)}
down_revision: str | Sequence[str] | None = ${quoted(down_revision)}
branch_labels: str | Sequence[str] | None = ${quoted(branch_labels)}
depends_on: str | Sequence[str] | None = ${quoted(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
