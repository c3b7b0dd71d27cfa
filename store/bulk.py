"""Bulk writes for the ingest hot path on PostgreSQL: one statement per table per batch.

A batch goes as **one JSON parameter** that PostgreSQL unpacks with ``json_to_recordset``: a short
SQL text whatever the batch size, serialized by orjson in C. The profiles that led here: first
~60 % of a worker's time was psycopg splitting huge VALUES lists and waiting on per-row
statements (executemany); then, with one array per column through ``unnest``, ~15 % of the
worker and of the ingress went to psycopg dumping those arrays element by element in Python.
SQLite keeps SQLAlchemy's executemany (handlers/ingest.py chooses).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, cast

import orjson
from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Integer,
    Row,
    String,
    Table,
    Text,
    TextClause,
    all_,
    any_,
    bindparam,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Session

from store.db import is_postgres


def _pg_type(table: Table, column: str) -> str:
    kind = table.c[column].type
    if isinstance(kind, Boolean):
        return "boolean"
    if isinstance(kind, BigInteger | Integer):
        return "bigint"
    if isinstance(kind, DateTime):
        return "timestamptz"
    if isinstance(kind, JSON):
        return "json"
    if isinstance(kind, String | Text):
        return "text"
    raise TypeError(f"no SQL type for {table.name}.{column} ({kind!r})")


def _table(model: type[DeclarativeBase]) -> Table:
    return cast(Table, model.__table__)


def _recordset(table: Table, columns: Sequence[str], alias: str) -> str:
    spec = ", ".join(f"{c} {_pg_type(table, c)}" for c in columns)
    return f"json_to_recordset(CAST(:rows AS json)) AS {alias}({spec})"


def _rows(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {"rows": orjson.dumps(rows).decode()}


@lru_cache(maxsize=256)
def _insert_sql(
    table: Table, columns: tuple[str, ...], tail: str, returning: tuple[str, ...]
) -> TextClause:
    # Cached: building a text() construct runs a regular expression over the SQL each time.
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"SELECT {', '.join(columns)} FROM {_recordset(table, columns, 'r')}"
    )
    if tail:
        sql += f" {tail}"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    return sql_text(sql)


def insert(
    session: Session,
    model: type[DeclarativeBase],
    rows: list[dict[str, Any]],
    *,
    tail: str = "",
    returning: Sequence[str] = (),
) -> list[Row[Any]]:
    """``INSERT INTO table (…) SELECT … FROM json_to_recordset(…) <tail> RETURNING …``."""
    if not rows:
        return []
    stmt = _insert_sql(_table(model), tuple(rows[0]), tail, tuple(returning))
    result = session.execute(stmt, _rows(rows))
    return list(result.all()) if returning else []


@lru_cache(maxsize=64)
def _update_sql(table: Table, columns: tuple[str, ...], key: str) -> TextClause:
    sets = ", ".join(f"{c} = v.{c}" for c in columns if c != key)
    return sql_text(
        f"UPDATE {table.name} AS t SET {sets} FROM {_recordset(table, columns, 'v')} "
        f"WHERE t.{key} = v.{key}"
    )


def update(
    session: Session, model: type[DeclarativeBase], rows: list[dict[str, Any]], *, key: str = "id"
) -> None:
    """Set each row's columns where ``key`` matches: ``UPDATE … FROM json_to_recordset(…)``."""
    if not rows:
        return
    session.execute(_update_sql(_table(model), tuple(rows[0]), key), _rows(rows))


@lru_cache(maxsize=64)
def _pairs_sql(sql: str, types: tuple[str, str]) -> TextClause:
    pairs = f"json_to_recordset(CAST(:rows AS json)) AS w(a {types[0]}, b {types[1]})"
    return sql_text(sql.replace(":pairs", pairs))


def select_pairs(
    session: Session, sql: str, first: Sequence[Any], second: Sequence[Any], types: tuple[str, str]
) -> list[Row[Any]]:
    """Run ``sql`` with ``:pairs`` standing for the rows ``w(a, b)`` of ``zip(first, second)``."""
    rows = [{"a": a, "b": b} for a, b in zip(first, second, strict=True)]
    return list(session.execute(_pairs_sql(sql, types), _rows(rows)))


def among(session: Session, column: InstrumentedAttribute[Any], values: Iterable[Any]) -> Any:
    """``column IN values``. On PostgreSQL one array parameter: the SQL text is the same whatever
    the count, so the driver converts it once and the server plans it once (an IN list of 500
    ids is 500 parameters to render, convert and parse on every call)."""
    values = list(values)
    if is_postgres(session):
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


def not_among(
    session: Session, column: InstrumentedAttribute[Any], values: Iterable[Any]
) -> ColumnElement[bool]:
    """``column NOT IN values``, the same way."""
    values = list(values)
    if is_postgres(session):
        return column != all_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.not_in(values)
