"""Bulk writes for the ingest hot path on PostgreSQL: one statement per table per batch.

Rows go as one array per column through ``unnest``: a short SQL text whatever the batch size,
instead of a statement per row (executemany) or a VALUES list of thousands of parameters that
the driver must parse every time. The profile that led here: ~60 % of a worker's time was psycopg
splitting huge queries and waiting on per-row statements. SQLite keeps SQLAlchemy's executemany
(handlers/ingest.py chooses).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import orjson
from sqlalchemy import JSON, BigInteger, DateTime, Integer, Row, String, Table, Text, text
from sqlalchemy.orm import DeclarativeBase, Session


def _pg_type(table: Table, column: str) -> str:
    kind = table.c[column].type
    if isinstance(kind, BigInteger | Integer):
        return "bigint"
    if isinstance(kind, DateTime):
        return "timestamptz"
    if isinstance(kind, JSON):
        return "json"
    if isinstance(kind, String | Text):
        return "text"
    raise TypeError(f"no array type for {table.name}.{column} ({kind!r})")


def _arrays(table: Table, columns: Sequence[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, col in enumerate(columns):
        values = [row[col] for row in rows]
        if _pg_type(table, col) == "json":
            values = [orjson.dumps(v).decode() for v in values]
        params[f"a{i}"] = values
    return params


def _unnest(table: Table, columns: Sequence[str]) -> str:
    casts = ", ".join(f"CAST(:a{i} AS {_pg_type(table, c)}[])" for i, c in enumerate(columns))
    return f"unnest({casts})"


def _table(model: type[DeclarativeBase]) -> Table:
    return cast(Table, model.__table__)


def insert(
    session: Session,
    model: type[DeclarativeBase],
    rows: list[dict[str, Any]],
    *,
    tail: str = "",
    returning: Sequence[str] = (),
) -> list[Row[Any]]:
    """``INSERT INTO table (…) SELECT * FROM unnest(…) <tail> RETURNING <returning>``."""
    if not rows:
        return []
    table = _table(model)
    columns = list(rows[0])
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM {_unnest(table, columns)}"
    if tail:
        sql += f" {tail}"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    result = session.execute(text(sql), _arrays(table, columns, rows))
    return list(result.all()) if returning else []


def update(
    session: Session, model: type[DeclarativeBase], rows: list[dict[str, Any]], *, key: str = "id"
) -> None:
    """Set each row's columns where ``key`` matches: ``UPDATE … FROM unnest(…)``."""
    if not rows:
        return
    table = _table(model)
    columns = list(rows[0])
    sets = ", ".join(f"{c} = v.{c}" for c in columns if c != key)
    session.execute(
        text(
            f"UPDATE {table.name} AS t SET {sets} FROM {_unnest(table, columns)} "
            f"AS v({', '.join(columns)}) WHERE t.{key} = v.{key}"
        ),
        _arrays(table, columns, rows),
    )


def select_pairs(
    session: Session, sql: str, first: Sequence[Any], second: Sequence[Any], types: tuple[str, str]
) -> list[Row[Any]]:
    """Run ``sql`` with ``:pairs`` standing for ``unnest(first, second) AS w(a, b)``."""
    pairs = f"unnest(CAST(:p0 AS {types[0]}[]), CAST(:p1 AS {types[1]}[])) AS w(a, b)"
    return list(session.execute(text(sql.replace(":pairs", pairs)), {"p0": first, "p1": second}))
