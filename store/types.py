"""Column types that hold one meaning on both stores.

``UTCDateTime``: every timestamp is stored as UTC and read back timezone-aware in UTC, on
PostgreSQL (``timestamptz``, whatever the session's time zone) and on SQLite (which has no time
zone type: SQLAlchemy writes the wall-clock digits and drops the offset, so ``01:00+02:00`` came
back as ``01:00``, two hours late). Converting at the column, once, replaces ``aware()`` calls
scattered over the code, one of which was always going to be missed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class NaiveDatetime(ValueError):
    """A datetime without a time zone reached the store: a bug, never guessed at."""


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            return value  # a SQL expression or a string SQLite already holds
        if value.tzinfo is None:
            raise NaiveDatetime(f"timestamp without a time zone: {value.isoformat()}")
        value = value.astimezone(UTC)
        # SQLite stores text: UTC digits, so that text order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value is refused (see ``NaiveDatetime``)."""
    if value.tzinfo is None:
        raise NaiveDatetime(f"timestamp without a time zone: {value.isoformat()}")
    return value.astimezone(UTC)
