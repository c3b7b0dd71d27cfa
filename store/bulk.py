"""Bulk reads and writes for the ingest hot path: one statement per table per batch.

The functions at the end (``insert_many``, ``matching``, ``update_many``) are the ones handlers
call; they hide the one difference between the stores, so a handler reads the same on both.

A batch goes as **one JSON parameter** that PostgreSQL unpacks with ``json_to_recordset``: a short
SQL text whatever the batch size, serialized by orjson in C. The profiles that led here: first
~60 % of a worker's time was psycopg splitting huge VALUES lists and waiting on per-row
statements (executemany); then, with one array per column through ``unnest``, ~15 % of the
worker and of the ingress went to psycopg dumping those arrays element by element in Python.
SQLite keeps SQLAlchemy's executemany.
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
    tuple_,
)
from sqlalchemy import text as sql_text
from sqlalchemy import update as sa_update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Session
from sqlalchemy.types import TypeDecorator

from store.db import is_postgres


def _pg_type(table: Table, column: str) -> str:
    kind = table.c[column].type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance  # store/types.py: UTCDateTime is a timestamptz
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


def json_rows(rows: list[dict[str, Any]]) -> dict[str, str]:
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
    result = session.execute(stmt, json_rows(rows))
    return list(result.all()) if returning else []


@lru_cache(maxsize=64)
def _update_sql(table: Table, columns: tuple[str, ...], keys: tuple[str, ...]) -> TextClause:
    sets = ", ".join(f"{c} = v.{c}" for c in columns if c not in keys)
    match = " AND ".join(f"t.{k} = v.{k}" for k in keys)
    return sql_text(
        f"UPDATE {table.name} AS t SET {sets} FROM {_recordset(table, columns, 'v')} WHERE {match}"
    )


def update(
    session: Session,
    model: type[DeclarativeBase],
    rows: list[dict[str, Any]],
    *,
    key: str | tuple[str, ...] = "id",
) -> None:
    """Set each row's columns where ``key`` matches: ``UPDATE … FROM json_to_recordset(…)``."""
    if not rows:
        return
    keys = (key,) if isinstance(key, str) else key
    session.execute(_update_sql(_table(model), tuple(rows[0]), keys), json_rows(rows))


@lru_cache(maxsize=64)
def _pairs_sql(sql: str, types: tuple[str, str]) -> TextClause:
    pairs = f"json_to_recordset(CAST(:rows AS json)) AS w(a {types[0]}, b {types[1]})"
    return sql_text(sql.replace(":pairs", pairs))


def select_pairs(
    session: Session, sql: str, first: Sequence[Any], second: Sequence[Any], types: tuple[str, str]
) -> list[Row[Any]]:
    """Run ``sql`` with ``:pairs`` standing for the rows ``w(a, b)`` of ``zip(first, second)``."""
    rows = [{"a": a, "b": b} for a, b in zip(first, second, strict=True)]
    return list(session.execute(_pairs_sql(sql, types), json_rows(rows)))


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


# ---- one call for both stores ------------------------------------------------------------------


def insert_many(
    session: Session,
    model: type[DeclarativeBase],
    rows: list[dict[str, Any]],
    *,
    returning: Sequence[str] = (),
    skip_conflicts_on: Sequence[str] = (),
) -> list[Row[Any]]:
    """Insert ``rows`` (all with the same keys) in one statement; the ``returning`` columns of
    each, in the order given. ``skip_conflicts_on``: leave out rows whose key exists (then
    nothing is returned)."""
    if not rows:
        return []
    assert not (returning and skip_conflicts_on), "skipped rows would shift the returned ones"
    if is_postgres(session):
        tail = (
            f"ON CONFLICT ({', '.join(skip_conflicts_on)}) DO NOTHING" if skip_conflicts_on else ""
        )
        return insert(session, model, rows, tail=tail, returning=returning)
    table = _table(model)
    stmt = sqlite.insert(table)
    if skip_conflicts_on:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(skip_conflicts_on))
    if not returning:
        session.execute(stmt, rows)
        return []
    returned = stmt.returning(*(table.c[c] for c in returning), sort_by_parameter_order=True)
    return list(session.execute(returned, rows).all())


def matching(
    session: Session,
    model: type[DeclarativeBase],
    columns: Sequence[str],
    keys: tuple[str, str],
    pairs: Sequence[tuple[Any, Any]],
) -> list[Row[Any]]:
    """``columns`` of the rows whose two ``keys`` columns equal one of ``pairs``."""
    if not pairs:
        return []
    table = _table(model)
    if is_postgres(session):
        types = (_pg_type(table, keys[0]), _pg_type(table, keys[1]))
        wanted = ", ".join(f"t.{c}" for c in columns)
        return select_pairs(
            session,
            f"SELECT {wanted} FROM {table.name} t JOIN :pairs"
            f" ON t.{keys[0]} = w.a AND t.{keys[1]} = w.b",
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            types,
        )
    from sqlalchemy import select

    found: list[Row[Any]] = []
    pairs = list(pairs)
    for start in range(0, len(pairs), 5000):  # SQLite's limit on bound parameters
        found += session.execute(
            select(*(table.c[c] for c in columns)).where(
                tuple_(table.c[keys[0]], table.c[keys[1]]).in_(pairs[start : start + 5000])
            )
        ).all()
    return found


def update_many(
    session: Session,
    model: type[DeclarativeBase],
    rows: list[dict[str, Any]],
    *,
    key: str | tuple[str, ...] = "id",
) -> None:
    """Set each row's other columns where its ``key`` columns match (one statement)."""
    if not rows:
        return
    if is_postgres(session):
        update(session, model, rows, key=key)
        return
    table = _table(model)
    keys = (key,) if isinstance(key, str) else key
    stmt = sa_update(table).where(*(table.c[k] == bindparam(f"k_{k}") for k in keys))
    stmt = stmt.values({c: bindparam(f"v_{c}") for c in rows[0] if c not in keys})
    session.execute(
        stmt,
        [
            {
                **{f"k_{k}": r[k] for k in keys},
                **{f"v_{c}": v for c, v in r.items() if c not in keys},
            }
            for r in rows
        ],
    )
