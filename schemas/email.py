"""One inbound email as the parser (handlers/email/parse.py) normalizes it: plain, frozen data.

Everything is decoded text: RFC 2047 encoded words, transfer encodings and charsets are resolved,
bodies use ``\\n`` line endings, message ids have no angle brackets. Attachment contents are not
kept here; the parser returns them next to the model, in the order of ``attachments``.
"""

from __future__ import annotations

from pydantic import AliasChoices, AwareDatetime, BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Frozen):
    """One mailbox: ``name`` is the decoded display name ("" if none).

    ``email`` is the local part as given and the domain lower-cased and IDNA-decoded to Unicode
    (``user@xn--bcher-kva.example`` becomes ``user@bücher.example``); an address that cannot be
    parsed is kept whole, as given.
    """

    name: str = ""
    email: str


class Attachment(_Frozen):
    """A part that is not the mail's text or HTML body; ``size`` and ``sha256`` are of its
    transfer-decoded bytes."""

    filename: str
    content_type: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_id: str | None = None
    # Shown within the body (``Content-Disposition: inline``, or a Content-ID and no disposition).
    inline: bool = False
    # The bytes are kept in the blob store (store/blobs.py) under ``sha256``; not when over the
    # size limit (the mail's ``problems`` say so).
    stored: bool = True


class ParsedEmail(_Frozen):
    """A mail, parsed leniently: what could not be read exactly is described in ``problems``."""

    message_id: str | None = None
    in_reply_to: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)  # header order, oldest first
    subject: str = ""
    from_: Address | None = Field(
        default=None,
        validation_alias=AliasChoices("from_", "from"),
        serialization_alias="from",
    )
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    reply_to: list[Address] = Field(default_factory=list)
    date: AwareDatetime | None = None
    # The text/plain body; a plain-text rendering of the HTML when the mail has no text of its own.
    text: str = ""
    html: str | None = None
    html_safe: str | None = None  # ``html`` sanitized with nh3, for display
    # ``text`` split in two: what the sender wrote now, and the quoted history and signature.
    visible_text: str = ""
    quoted_text: str = ""
    attachments: list[Attachment] = Field(default_factory=list)
    headers: list[tuple[str, str]] = Field(default_factory=list)  # top-level, decoded, in order
    auto_submitted: bool = False  # an auto-reply: vacation notice, autoresponder, list or bulk
    bounce: bool = False  # a delivery status notification
    problems: list[str] = Field(default_factory=list)
