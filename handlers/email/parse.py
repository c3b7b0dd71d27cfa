"""Lenient email parsing: raw RFC 5322 bytes, or a provider's pre-split parts, → ``ParsedEmail``.

The contract: anything with headers parses. Malformed MIME, wrong or unknown charsets, broken
transfer encodings, missing or garbage headers are decoded as well as they can be and noted in
``problems``; only input with nothing usable in it raises ``UnparseableEmail`` (the worker then
keeps the raw payload as a dead letter).

``parse_raw`` and ``from_parts`` end in the same function, so a mail gives the same
``ParsedEmail`` whether a provider posts it raw or already split.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email import message_from_bytes
from email.errors import HeaderParseError
from email.header import decode_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

import idna
import nh3

from handlers.email.quotes import split_quoted
from schemas.email import Address, Attachment, ParsedEmail

MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
SAFE_URL_SCHEMES = nh3.ALLOWED_URL_SCHEMES | {"cid"}  # inline images (Content-ID) survive
FOLD = re.compile(r"\r?\n[ \t]+")  # a folded header line continues the value
MSG_ID = re.compile(r"<([^<>\s]+)>")

# (filename, content type, bytes, content id, inline)
AttachmentIn = tuple[str, str, bytes, str | None, bool]


class UnparseableEmail(Exception):
    """Nothing usable: no headers at all, or no input."""


def parse_raw(
    raw: bytes, *, max_attachment_bytes: int = MAX_ATTACHMENT_BYTES
) -> tuple[ParsedEmail, list[bytes]]:
    """Parse a whole mail. Returns the parsed mail and its attachments' bytes, in order."""
    if not raw.strip():
        raise UnparseableEmail("empty mail")
    try:
        message = message_from_bytes(raw)  # compat32: the most forgiving parser of the stdlib
        raw_headers = [(name, _unescape(str(value))) for name, value in message.raw_items()]
        if not raw_headers:
            raise UnparseableEmail("no headers")
        problems: list[str] = []
        bodies = _Bodies(problems)  # notes every part's MIME defects, the root's included
        bodies.collect(message)
    except RecursionError:
        return _too_deep(raw, max_attachment_bytes)
    return _build(
        raw_headers,
        bodies.text,
        bodies.html,
        bodies.attachments,
        problems,
        max_attachment_bytes,
        report=bodies.report,
        content_type=message.get_content_type(),
    )


def _too_deep(raw: bytes, max_attachment_bytes: int) -> tuple[ParsedEmail, list[bytes]]:
    """A mail whose parts nest deeper than the stdlib's recursive parser goes: its headers,
    read alone, and a problem saying its body was not; lenient, like everything else here."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i != -1]
    head = raw[: min(ends)] if ends else raw
    message = message_from_bytes(head + b"\r\n\r\n")
    raw_headers = [(name, _unescape(str(value))) for name, value in message.raw_items()]
    if not raw_headers:
        raise UnparseableEmail("no headers")
    problems = ["its parts nest too deep to be read: the body was not parsed"]
    return _build(
        raw_headers,
        None,
        None,
        [],
        problems,
        max_attachment_bytes,
        report=False,
        content_type=message.get_content_type(),
    )


def from_parts(
    *,
    headers: Sequence[tuple[str, str]],
    text: str | None,
    html: str | None,
    attachments: Sequence[AttachmentIn] = (),
    max_attachment_bytes: int = MAX_ATTACHMENT_BYTES,
) -> tuple[ParsedEmail, list[bytes]]:
    """A mail a provider has already split (Postmark, Mailgun or SendGrid parsed form)."""
    content_type = next((v for n, v in headers if n.lower() == "content-type"), "")
    return _build(
        list(headers),
        text,
        html,
        list(attachments),
        [],
        max_attachment_bytes,
        report=any(a[1].lower() == "message/delivery-status" for a in attachments),
        content_type=content_type.split(";")[0].strip().lower(),
    )


def _build(
    raw_headers: list[tuple[str, str]],
    text: str | None,
    html: str | None,
    attachments: list[AttachmentIn],
    problems: list[str],
    max_attachment_bytes: int,
    *,
    report: bool,
    content_type: str,
) -> tuple[ParsedEmail, list[bytes]]:
    headers = [(name, _decode(value)) for name, value in raw_headers]

    def first(name: str) -> str:
        return next((v for n, v in headers if n.lower() == name), "")

    def every(name: str) -> list[str]:
        return [v for n, v in headers if n.lower() == name]

    message_id = _ids(first("message-id"))
    if not message_id:
        problems.append("no Message-ID")
    date = _date(first("date"), problems)
    if html is not None:
        html = _lines(html)
    text = _lines(text) if text is not None else (_html_to_text(html) if html else "")
    visible, quoted = split_quoted(text)
    kept: list[Attachment] = []
    contents: list[bytes] = []
    for filename, kind, data, content_id, inline in attachments:
        too_big = len(data) > max_attachment_bytes
        kept.append(
            Attachment(
                filename=filename or "attachment",
                content_type=kind or "application/octet-stream",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                content_id=next(iter(_ids(content_id or "")), content_id),
                inline=inline,
                stored=not too_big,
            )
        )
        if too_big:
            problems.append(f"attachment {filename!r} over {max_attachment_bytes} bytes: not kept")
            data = b""
        contents.append(data)
    subject = first("subject")

    def addresses(name: str) -> list[Address]:
        # From the undecoded value: a decoded display name may hold commas or quotes.
        return _addresses([v for n, v in raw_headers if n.lower() == name])

    sender = addresses("from")
    parsed = ParsedEmail(
        message_id=message_id[0] if message_id else None,
        in_reply_to=[i for v in every("in-reply-to") for i in _ids(v)],
        references=[i for v in every("references") for i in _ids(v)],
        subject=subject,
        from_=sender[0] if sender else None,
        to=addresses("to"),
        cc=addresses("cc"),
        reply_to=addresses("reply-to"),
        date=date,
        text=text,
        html=html,
        html_safe=nh3.clean(html, url_schemes=SAFE_URL_SCHEMES) if html else None,
        visible_text=visible,
        quoted_text=quoted,
        attachments=kept,
        headers=headers,
        auto_submitted=_automatic(headers, subject),
        bounce=_bounce(headers, subject, sender, report, content_type),
        problems=problems,
    )
    return parsed, contents


class _Bodies:
    """Walks the MIME tree once: the first text and HTML bodies, everything else attached."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.text: str | None = None
        self.html: str | None = None
        self.attachments: list[AttachmentIn] = []
        self.report = False

    def collect(self, part: Message) -> None:
        kind = part.get_content_type()
        self.problems.extend(f"MIME defect: {type(d).__name__}" for d in part.defects)
        if kind == "message/delivery-status":
            self.report = True
        if kind.startswith("multipart/"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                for child in payload:
                    if isinstance(child, Message):
                        self.collect(child)
                return
            self.problems.append(f"{kind} without parts: its body read as text")
            if self.text is None:
                self.text = _text_of(part, self.problems)
            return
        filename = _filename(part, self.problems)
        disposition = (part.get_content_disposition() or "").lower()
        body_like = kind in ("text/plain", "text/html") and disposition != "attachment"
        if body_like and not filename:
            decoded = _text_of(part, self.problems)
            if kind == "text/plain" and self.text is None:
                self.text = decoded
                return
            if kind == "text/html" and self.html is None:
                self.html = decoded
                return
        data = _bytes_of(part)
        name = _decode(filename) if filename else _default_name(kind)
        content_id = part.get("Content-ID")
        self.attachments.append(
            (name, kind, data, str(content_id) if content_id else None, disposition == "inline")
        )


def _filename(part: Message, problems: list[str]) -> str | None:
    try:
        return part.get_filename()
    except (ValueError, LookupError, UnicodeError):  # an RFC 2231 name in a garbled charset
        problems.append("unreadable attachment file name")
        raw = part.get_param("filename", header="content-disposition") or part.get_param("name")
        return str(raw[2] if isinstance(raw, tuple) else raw or "") or None


def _bytes_of(part: Message) -> bytes:
    payload = part.get_payload()
    if isinstance(payload, list):  # an attached message (message/rfc822): kept whole
        try:
            return b"".join(p.as_bytes() for p in payload if isinstance(p, Message))
        except Exception:  # noqa: BLE001 - a part that cannot be re-serialized is kept empty
            return b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _default_name(kind: str) -> str:
    return {"message/rfc822": "message.eml", "message/delivery-status": "delivery-status.txt"}.get(
        kind, "attachment"
    )


def _text_of(part: Message, problems: list[str]) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    return decode_bytes(data, part.get_content_charset(), problems)


# What mail clients do (and the WHATWG encoding standard): Latin-1 and ASCII labels are read as
# windows-1252, their superset, so that a mislabelled dash or quote is not a control character.
SUPERSETS = {"iso-8859-1": "cp1252", "latin-1": "cp1252", "latin1": "cp1252", "us-ascii": "cp1252"}


def decode_bytes(data: bytes, charset: str | None, problems: list[str]) -> str:
    """Declared charset, else UTF-8, else windows-1252 (what mislabelled mail usually is)."""
    if charset:
        charset = SUPERSETS.get(charset.lower(), charset)
        try:
            return data.decode(charset)
        except UnicodeDecodeError:
            problems.append(f"text is not valid {charset}")
        except (LookupError, ValueError):  # ValueError: a garbled name (with a NUL, say)
            problems.append(f"unknown charset {charset[:40]!r}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if charset is None:
            problems.append("undeclared charset, not UTF-8: read as windows-1252")
        return data.decode("cp1252", errors="replace")


def _unescape(text: str) -> str:
    """Raw 8-bit header bytes (surrogate-escaped by the parser): UTF-8, else windows-1252."""
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return text
    data = text.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _decode(value: object) -> str:
    """A header value with its RFC 2047 encoded words decoded, each word with its own charset
    (an unknown one read like an undeclared body); never raises."""
    text = FOLD.sub(" ", _unescape(str(value)))
    try:
        parts = decode_header(text)
    except (HeaderParseError, ValueError, AssertionError, LookupError):
        return text
    return "".join(
        chunk if isinstance(chunk, str) else decode_bytes(chunk, charset, [])
        for chunk, charset in parts
    )


def _ids(value: str) -> list[str]:
    found = MSG_ID.findall(value)
    if not found and value.strip() and " " not in value.strip():
        found = [value.strip().strip("<>")]  # a bare id, as some providers send it
    return found


def _date(value: str, problems: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        problems.append(f"unparseable Date {value[:80]!r}")
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _addresses(values: list[str]) -> list[Address]:
    out = []
    for name, email in getaddresses(values):
        if not email:
            continue
        out.append(Address(name=_decode(name), email=_idna(email)))
    return out


def _idna(email: str) -> str:
    local, at, domain = email.rpartition("@")
    if not at:
        return email
    try:
        domain = idna.decode(domain.lower())
    except idna.IDNAError:
        domain = domain.lower()
    return f"{local}@{domain}"


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _html_to_text(html: str) -> str:
    block = re.sub(r"(?i)<\s*(br|/p|/div|/li|/tr|/h\d)\b[^>]*>", "\n", html)
    text = html_lib.unescape(nh3.clean(block, tags=set()))
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()


AUTO_SUBJECT = re.compile(
    r"^(auto:|automatic reply|autoreply|auto-reply|out of (the )?office|resposta autom[aá]tica"
    r"|respuesta autom[aá]tica|abwesenheitsnotiz|r[ée]ponse automatique)",
    re.IGNORECASE,
)
BOUNCE_SUBJECT = re.compile(
    r"(undeliver|returned mail|delivery status notification \(failure\)|mail delivery fail"
    r"|delivery failure|failure notice)",
    re.IGNORECASE,
)


def _automatic(headers: list[tuple[str, str]], subject: str) -> bool:
    values = {n.lower(): v.strip().lower() for n, v in headers}
    if values.get("auto-submitted", "no") != "no":
        return True
    if values.get("precedence") in ("bulk", "junk", "auto_reply", "list"):
        return True
    if "x-autoreply" in values or "x-autorespond" in values:
        return True
    suppress = values.get("x-auto-response-suppress", "")
    if any(word in suppress for word in ("all", "oof", "autoreply")):
        return True
    if values.get("x-autogenerated") == "reply":
        return True
    return bool(AUTO_SUBJECT.match(subject.strip()))


def _bounce(
    headers: list[tuple[str, str]],
    subject: str,
    sender: list[Address],
    report: bool,
    content_type: str,
) -> bool:
    raw_type = next((v.lower() for n, v in headers if n.lower() == "content-type"), "")
    if content_type == "multipart/report" and "delivery-status" in raw_type:
        return True
    if report:
        return True
    daemon = bool(sender) and sender[0].email.lower().split("@")[0] in (
        "mailer-daemon",
        "postmaster",
    )
    return daemon and bool(BOUNCE_SUBJECT.search(subject))
