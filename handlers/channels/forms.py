"""HTML form bodies (``multipart/form-data`` and urlencoded), as Mailgun and SendGrid post them.

``parse_form`` turns a body into JSON-safe data for the journal: text fields by name, and files
with their bytes base64-encoded. The stdlib's MIME parser reads multipart bodies: a form is MIME.
``form_mail`` reads the mail back out of that data in the worker.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

from handlers.channels.base import PayloadError
from handlers.email.parse import from_parts, parse_raw
from schemas.email import ParsedEmail


def parse_form(content_type: str, body: bytes) -> dict[str, Any]:
    """``{"fields": {name: text}, "files": [{"field", "filename", "content_type", "content"}]}``"""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise PayloadError("form body is not UTF-8") from None
        return {"fields": dict(pairs), "files": []}
    if kind != "multipart/form-data" or "boundary=" not in content_type:
        raise PayloadError(
            f"content type {kind or 'none'!r}: expected a multipart or urlencoded form",
            field="content-type",
        )
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    parts = message.get_payload()
    if not isinstance(parts, list) or not parts:
        raise PayloadError("multipart form without parts")
    raw_fields: dict[str, tuple[bytes, str | None]] = {}
    files: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            raw_fields[name] = (data, part.get_content_charset())
        else:
            files.append(
                {
                    "field": name,
                    "filename": filename,
                    "content_type": part.get_content_type(),
                    "content": base64.b64encode(data).decode(),
                }
            )
    charsets = _charsets(raw_fields)
    fields = {
        name: _text(data, charsets.get(name) or declared)
        for name, (data, declared) in raw_fields.items()
    }
    return {"fields": fields, "files": files}


def _charsets(raw_fields: dict[str, tuple[bytes, str | None]]) -> dict[str, str]:
    """SendGrid's ``charsets`` field: the charset of each other field, as JSON."""
    try:
        found = json.loads(raw_fields.get("charsets", (b"{}", None))[0] or b"{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _text(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8")
    except (LookupError, ValueError):
        return data.decode("utf-8", errors="replace")


def form_mail(
    payload: dict[str, Any],
    *,
    raw_field: str,
    headers: Callable[[dict[str, str]], list[tuple[str, str]]],
    text_field: str,
    html_field: str,
) -> tuple[ParsedEmail, list[bytes]]:
    """The mail in a ``parse_form`` payload: the whole MIME message in ``raw_field`` if the
    provider posted it raw, else the parts it split out (headers, text, HTML, files)."""
    fields: dict[str, str] = payload.get("fields", {})
    if raw_field in fields:
        return parse_raw(fields[raw_field].encode("utf-8", "surrogateescape"))
    return from_parts(
        headers=headers(fields),
        text=fields.get(text_field),
        html=fields.get(html_field),
        attachments=[_attachment(f) for f in payload.get("files", [])],
    )


def _attachment(f: dict[str, Any]) -> tuple[str, str, bytes, str | None, bool]:
    return (
        str(f.get("filename") or "attachment"),
        str(f.get("content_type") or "application/octet-stream"),
        base64.b64decode(f.get("content", "")),
        None,
        False,
    )
