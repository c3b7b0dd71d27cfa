"""The migrations build exactly the schema the models describe (on the store the suite runs on)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from store.db import engine
from store.models import Base


def test_migrations_match_the_models(migrated: None):
    with engine().connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
