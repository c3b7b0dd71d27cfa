"""The README's Configuration table and settings.py name the same variables: a setting nobody can
find is as bad as one that does not exist, and a documented one that does not exist misleads."""

from __future__ import annotations

import re
from pathlib import Path

from settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def _documented() -> set[str]:
    text = README.read_text()
    table = text[text.index("## Configuration") :]
    table = table[: table.index("\n## ", 1)]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", table, flags=re.M)) | set(
        re.findall(r"` / `([A-Z][A-Z0-9_]+)`", table)
    )


def _names(field: str) -> set[str]:
    """The variables a field reads: INBOXSYNC_<FIELD>, or its aliases."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return {str(c) for c in choices}
    if isinstance(alias, str):
        return {alias}
    return {f"INBOXSYNC_{field.upper()}"}


def test_every_setting_is_in_the_readme_and_every_row_is_a_setting() -> None:
    documented = _documented()
    missing = [f for f in Settings.model_fields if not _names(f) & documented]
    assert missing == [], f"settings.py fields with no row in README's Configuration: {missing}"
    known = set().union(*(_names(f) for f in Settings.model_fields))
    unknown = sorted(documented - known)
    assert unknown == [], f"README rows that settings.py does not read: {unknown}"
