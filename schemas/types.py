"""Small types every API body shares.

- ``Timestamp``: the API's one way to show a time: UTC, ending in ``Z``, whatever offset it was
  given in.
- ``Id``: a row id as the store can hold it (PostgreSQL ``bigint``): a larger number is a 422
  that says so, not a 500 from the driver.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from annotated_types import Ge, Le
from pydantic import AfterValidator

MAX_ID = 2**63 - 1


def _utc(value: datetime) -> datetime:
    # Naive values only come from code that meant UTC (the store returns aware ones).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Timestamp = Annotated[datetime, AfterValidator(_utc)]
Id = Annotated[int, Ge(0), Le(MAX_ID)]
