"""HTML form bodies (``multipart/form-data`` and urlencoded), as Mailgun and SendGrid post them.

Two readers, for the two moments of a request:

- ``signature_fields``, for ``verify``: the few text fields a signature covers, found by a scan
  that reads part headers and nothing else, over at most ``max_form_parts`` parts. An unsigned
  flood of parts costs its sender a 401 in milliseconds, not a parse.
- ``parse_form``, for ``accept`` (after ``verify``): the whole form as JSON-safe data for the
  journal, text fields by name and files base64-encoded. The stdlib's MIME parser reads it (a
  form is MIME) at a fraction of a millisecond per part, so the form's parts and header lines are
  counted first and a form over the limits is refused (413) before the parser sees it.

``form_mail`` reads the mail back out of that data in the worker.
"""

from __future__ import annotations

import base64
import json
import quopri
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from handlers.channels.base import PayloadError, TooLarge
from handlers.email.parse import from_parts, parse_raw
from schemas.email import ParsedEmail
from settings import get_settings

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
# The stdlib ends a line at CRLF, LF or a bare CR; so does the scan, and a part's headers end at
# the first empty line in any of those spellings.
BLANK_LINES = (b"\r\n\r\n", b"\n\n", b"\r\r")
DISPOSITION = re.compile(rb"^content-disposition:([^\r\n]{0,2000})", re.IGNORECASE | re.MULTILINE)
NAME = re.compile(rb';\s*name\s*=\s*(?:"([^"\r\n]*)"|([^;\s"]+))', re.IGNORECASE)


@dataclass(frozen=True)
class FormLimits:
    """How much of a form the edge parses: INBOXSYNC_MAX_FORM_PARTS, INBOXSYNC_MAX_HEADER_LINES."""

    parts: int
    header_lines: int

    @classmethod
    def current(cls) -> FormLimits:
        settings = get_settings()
        return cls(settings.max_form_parts, settings.max_header_lines)


def signature_fields(
    content_type: str, body: bytes, names: frozenset[str], *, max_parts: int
) -> dict[str, str]:
    """The text of the fields called ``names`` among the form's first ``max_parts`` parts,
    without parsing the others; a name not there is absent from the answer. ``PayloadError`` if
    the body is not a form, a wanted field is not UTF-8 text, or one is given twice (a signature
    checked against one copy must not be taken to cover the other)."""
    kind = _kind(content_type)
    if kind == URLENCODED:
        found = _urlencoded_fields(body, names, max_parts)
    else:
        found = _multipart_fields(body, _boundary(kind, content_type), names, max_parts)
    out: dict[str, str] = {}
    for name, raw in found:
        if name in out:
            raise PayloadError(f"more than one {name} field", field=name)
        try:
            out[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(f"{name} is not UTF-8 text", field=name) from None
    return out


def parse_form(content_type: str, body: bytes, limits: FormLimits | None = None) -> dict[str, Any]:
    """``{"fields": {name: text}, "files": [{"field", "filename", "content_type", "content"}]}``

    ``TooLarge`` for a form with more parts or part header lines than ``limits`` (default: the
    settings), before it is parsed; ``PayloadError`` for a body that is not a form."""
    limits = limits or FormLimits.current()
    kind = _kind(content_type)
    if kind == URLENCODED:
        if body.count(b"&") >= limits.parts:
            raise _too_many_parts(limits)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise PayloadError("form body is not UTF-8") from None
        return {"fields": dict(pairs), "files": []}
    boundary = _boundary(kind, content_type)
    _check_within(limits, body, boundary)
    raw_fields: dict[str, tuple[bytes, str | None]] = {}
    files: list[dict[str, Any]] = []
    # Split by the delimiters, and only each part's header block goes to the stdlib's parser: a
    # part's content is kept as sent, whatever its type (a file of type message/rfc822 or
    # multipart/* is an attachment, not MIME to parse, and a deep one would exhaust the stack).
    parts = list(_parts(body, boundary))
    if not parts:
        raise PayloadError("multipart form without parts")
    for found in parts:
        part = BytesParser(policy=HTTP).parsebytes(found.headers + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = _decoded(part, body[found.start : found.end])
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


def line_count(block: bytes) -> int:
    """Lines in a header block, ended as the stdlib's parser ends them: CRLF, LF or a bare CR."""
    return block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n") + 1


def _kind(content_type: str) -> str:
    kind = content_type.split(";")[0].strip().lower()
    if kind not in (URLENCODED, MULTIPART):
        raise PayloadError(
            f"content type {kind or 'none'!r}: expected a multipart or urlencoded form",
            field="content-type",
        )
    return kind


def _boundary(kind: str, content_type: str) -> bytes:
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 200:
        raise PayloadError(f"{kind} without a boundary", field="content-type")
    return boundary.encode("latin-1", "replace")


@dataclass(frozen=True)
class _Part:
    headers: bytes
    start: int  # where its content starts in the body
    end: int  # and ends


def _parts(body: bytes, boundary: bytes) -> Iterator[_Part]:
    """The parts of a multipart body, in order, by their delimiters, reading only their headers.

    A delimiter counts wherever it appears, not only at the start of a line: a part's content
    may not contain it (RFC 2046 5.1.1), and counting more than the stdlib parser would see is
    what makes the count a bound on its work."""
    delimiter = b"--" + boundary
    at = body.find(delimiter)
    while at != -1:
        after = at + len(delimiter)
        if body.startswith(b"--", after):
            return  # the close delimiter
        following = body.find(delimiter, after)
        end = len(body) if following == -1 else following
        yield _part(body, after, end)
        at = following


def _part(body: bytes, after: int, end: int) -> _Part:
    """One part: ``after`` is just past its delimiter, ``end`` at the next one."""
    # The rest of the delimiter line (transport padding) is not the part's; its line break is
    # where an empty header block would start.
    line_break = min(
        (i for i in (body.find(b"\n", after, end), body.find(b"\r", after, end)) if i != -1),
        default=end,
    )
    blanks = [(i, len(b)) for b in BLANK_LINES if (i := body.find(b, line_break, end)) != -1]
    if not blanks:
        return _Part(body[line_break:end], end, end)
    blank, width = min(blanks)
    head_start = line_break + (2 if body.startswith(b"\r\n", line_break) else 1)
    content_end = end
    for ending in (b"\r\n", b"\n", b"\r"):
        if body.endswith(ending, blank + width, end):
            content_end = end - len(ending)
            break
    return _Part(body[head_start:blank], blank + width, max(content_end, blank + width))


def _part_name(headers: bytes) -> str | None:
    disposition = DISPOSITION.search(headers)
    name = NAME.search(disposition.group(1)) if disposition else None
    if name is None:
        return None
    return (name.group(1) if name.group(1) is not None else name.group(2)).decode("latin-1")


def _multipart_fields(
    body: bytes, boundary: bytes, names: frozenset[str], max_parts: int
) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for count, part in enumerate(_parts(body, boundary), start=1):
        if (name := _part_name(part.headers)) in names:
            found.append((name, body[part.start : part.end]))
        if count >= max_parts:
            break
    return found


def _urlencoded_fields(
    body: bytes, names: frozenset[str], max_parts: int
) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    at = 0
    for _ in range(max_parts):
        amp = body.find(b"&", at)
        end = len(body) if amp == -1 else amp
        equals = body.find(b"=", at, end)
        key_end = end if equals == -1 else equals
        if key_end - at <= 64:  # longer than any field name wanted: not read
            name = _unquote(body[at:key_end]).decode("utf-8", "replace")
            if name in names:
                found.append((name, b"" if equals == -1 else _unquote(body[equals + 1 : end])))
        if amp == -1:
            break
        at = amp + 1
    return found


def _unquote(raw: bytes) -> bytes:
    """As ``parse_qsl`` reads a name or a value: ``+`` is a space, then %-escapes."""
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _check_within(limits: FormLimits, body: bytes, boundary: bytes) -> None:
    lines = 0
    for count, part in enumerate(_parts(body, boundary), start=1):
        if count > limits.parts:
            raise _too_many_parts(limits)
        lines += line_count(part.headers)
        if lines > limits.header_lines:
            raise TooLarge(
                f"more than {limits.header_lines} header lines in the form's parts "
                "(INBOXSYNC_MAX_HEADER_LINES)"
            )


def _too_many_parts(limits: FormLimits) -> TooLarge:
    return TooLarge(f"more than {limits.parts} parts in the form (INBOXSYNC_MAX_FORM_PARTS)")


def _charsets(raw_fields: dict[str, tuple[bytes, str | None]]) -> dict[str, str]:
    """SendGrid's ``charsets`` field: the charset of each other field, as JSON."""
    try:
        found = json.loads(raw_fields.get("charsets", (b"{}", None))[0] or b"{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _decoded(part: Message, content: bytes) -> bytes:
    """A part's content without its Content-Transfer-Encoding (rare in forms, but allowed)."""
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=False)
        except ValueError:
            return content
    if encoding == "quoted-printable":
        return quopri.decodestring(content)
    return content


def _text(data: bytes, charset: str | None) -> str:
    try:
        text = data.decode(charset or "utf-8")
    except (LookupError, ValueError):
        return data.decode("utf-8", errors="replace")
    # Some decoders (UTF-7: "+2AA-") make lone surrogates, which no JSON or UTF-8 text holds.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


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
