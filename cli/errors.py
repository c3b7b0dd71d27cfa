"""People's errors: configuration, connection and permission problems as one line that names the
setting and the fix, and an exit code (2: a setting is wrong; 3: a service or a directory cannot
be reached or written), instead of a traceback a newcomer has to read from the bottom.

``explain`` knows the cases; ``cli/main.py main`` calls it on whatever a command raised.
"""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

WRONG_SETTING, UNREACHABLE = 2, 3


def explain(exc: BaseException) -> tuple[str, int] | None:
    """A one-line explanation of ``exc`` and the exit code, or None if it is not a known case."""
    for check in (_settings, _store_url, _store, _data_dir, _broker):
        found = check(exc)
        if found is not None:
            return found
    return None


def _settings(exc: BaseException) -> tuple[str, int] | None:
    if not isinstance(exc, ValidationError) or exc.title != "Settings":
        return None
    problems = "; ".join(
        f"{str(e['loc'][0]).upper() if e['loc'] else 'a setting'}: {e['msg']}" for e in exc.errors()
    )
    return f"invalid setting: {problems} (see README: Configuration)", WRONG_SETTING


def _store_url(exc: BaseException) -> tuple[str, int] | None:
    if isinstance(exc, sa_exc.ArgumentError | sa_exc.NoSuchModuleError):
        return (
            f"DATABASE_URL is not a URL inboxsync can use ({exc}): "
            "use postgresql://user@host:5432/name, or unset it for the embedded SQLite store",
            WRONG_SETTING,
        )
    return None


def _store(exc: BaseException) -> tuple[str, int] | None:
    if not isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return None
    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else ""
    where = _where()
    if "does not exist" in text and "database" in text:
        return (
            f"the database of DATABASE_URL does not exist ({text}): create it "
            f"(createdb) or point DATABASE_URL at one that does; store: {where}",
            UNREACHABLE,
        )
    if "password authentication failed" in text or "no password supplied" in text:
        return f"the store refused the credentials of DATABASE_URL ({text}); store: {where}", 3
    if "unable to open database file" in text or "readonly database" in text:
        return (
            f"cannot write the embedded store ({text}): INBOXSYNC_DATA_DIR must be a "
            f"writable directory; store: {where}",
            UNREACHABLE,
        )
    return (
        f"cannot reach the store ({text}): is PostgreSQL running, and is DATABASE_URL right? "
        f"store: {where}",
        UNREACHABLE,
    )


def _data_dir(exc: BaseException) -> tuple[str, int] | None:
    if not isinstance(exc, PermissionError | NotADirectoryError | FileNotFoundError):
        return None
    return (
        f"cannot use the data directory ({exc.strerror}: {exc.filename}): set "
        "INBOXSYNC_DATA_DIR to a writable directory",
        UNREACHABLE,
    )


def _broker(exc: BaseException) -> tuple[str, int] | None:
    from kombu.exceptions import OperationalError as BrokerError

    if not isinstance(exc, BrokerError | ConnectionRefusedError):
        return None
    return (
        f"cannot reach the broker ({exc}): is Redis (or RabbitMQ) running, and is "
        "CELERY_BROKER_URL right?",
        UNREACHABLE,
    )


def _where() -> str:
    """The store's URL without its password (for the message)."""
    try:
        from settings import get_settings

        return make_url(get_settings().resolved_database_url).render_as_string(hide_password=True)
    except Exception:
        return "(DATABASE_URL)"
