"""Schema migrations (Alembic), run by ``inboxsync migrate`` and by every entry point at start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from settings import get_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is a ConfigParser: a '%' in the URL (an escaped password, options=…)
    # must be doubled or it is read as interpolation.
    url = url or get_settings().resolved_database_url
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None) -> None:
    """Bring the store to the newest schema; a no-op when it is there already."""
    command.upgrade(alembic_config(url), "head")
