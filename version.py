"""inboxsync's version, from one place: the installed package's metadata (pyproject.toml)."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata


@lru_cache
def version() -> str:
    try:
        return metadata.version("inboxsync")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0.0.0+unknown"
