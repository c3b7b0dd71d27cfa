"""Small types every API body shares.

- ``Timestamp``: the API's one way to show a time: UTC, ending in ``Z``, whatever offset it was
  given in.
- ``Id``: a row id as the store can hold it (PostgreSQL ``bigint``): a larger number is a 422
  that says so, not a 500 from the driver.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import AfterValidator, AwareDatetime, BeforeValidator

MAX_ID = 2**63 - 1


def _utc(value: datetime) -> datetime:
    # Naive values only come from code that meant UTC (the store returns aware ones).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Timestamp = Annotated[datetime, AfterValidator(_utc)]


def _not_a_boolean(value: object) -> object:
    # JSON ``true`` is not an id; lax mode would read it as 1.
    if isinstance(value, bool):
        raise ValueError("an id is a number, not a boolean")
    return value


# The check of booleans last: it runs first, and the bounds stay in the JSON schema.
Id = Annotated[int, Ge(0), Le(MAX_ID), BeforeValidator(_not_a_boolean)]


def _iso_text(value: Any) -> Any:
    # pydantic would also take a number (or a numeric text, as a query parameter is) as unix
    # seconds; the schema says an ISO 8601 time, and so does the answer to anything else.
    if isinstance(value, datetime):  # from Python callers (the CLI, tests)
        return value
    if not isinstance(value, str) or not re.match(r"\d{4}-", value):
        raise ValueError("an ISO 8601 time with its offset, e.g. 2026-01-01T00:00:00Z")
    return value


# A time the API is given: ISO 8601 text with an offset (schemas/ops.py, schemas/api.py).
IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
