"""A lease in the store: at most one holder of a name at a time, for ``ttl_s`` unless renewed.

The periodic work (handlers/periodic.py) runs in every HTTP and worker process, and each tries
to take the lease ``periodic`` before each round: one process does the round, the others wait
their turn; when the holder stops (or dies), its lease runs out and another takes over. The
store decides with one conditional statement, so two processes can never both win a round.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from store.db import is_postgres, reading, transaction
from store.models import Lease


def acquire(name: str, holder: str, ttl_s: float, now: datetime | None = None) -> bool:
    """Take or renew ``name`` for ``holder`` if it is free, expired, or ``holder``'s already."""
    now = now or datetime.now(UTC)
    until = now + timedelta(seconds=ttl_s)
    with transaction() as session:
        taken = session.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
            .values(holder=holder, expires_at=until, rounds=Lease.rounds + 1)
            .returning(Lease.name)
        ).first()
        if taken is not None:
            return True
        dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
        made = session.execute(
            dialect_insert(Lease)
            .values(name=name, holder=holder, expires_at=until, rounds=1)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(Lease.name)
        ).first()
        return made is not None


def take_turn(name: str, holder: str, every_s: float, now: datetime | None = None) -> bool:
    """Take ``name`` for ``every_s`` if its last turn (anyone's, ``holder``'s too) has run out:
    work done under it runs at most once per ``every_s`` in the deployment, whichever process
    comes first after that, and goes on when the process that did the last turn is gone."""
    now = now or datetime.now(UTC)
    until = now + timedelta(seconds=every_s)
    with transaction() as session:
        taken = session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.expires_at <= now)
            .values(holder=holder, expires_at=until, rounds=Lease.rounds + 1)
            .returning(Lease.name)
        ).first()
        if taken is not None:
            return True
        dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
        made = session.execute(
            dialect_insert(Lease)
            .values(name=name, holder=holder, expires_at=until, rounds=1)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(Lease.name)
        ).first()
        return made is not None


def expires_at(name: str) -> datetime | None:
    """When ``name``'s current holding runs out (None: never taken)."""
    with reading() as session:
        return session.scalar(select(Lease.expires_at).where(Lease.name == name))


def release(name: str, holder: str) -> None:
    """Give the lease up at once (a clean stop), if ``holder`` has it."""
    with transaction() as session:
        session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
        )


def holder_of(name: str) -> tuple[str, int] | None:
    """Who holds ``name`` (or last did), and how many rounds were taken under it."""
    with reading() as session:
        row = session.execute(select(Lease.holder, Lease.rounds).where(Lease.name == name)).first()
        return None if row is None else (row.holder, row.rounds)
