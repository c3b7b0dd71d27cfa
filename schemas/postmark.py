"""Postmark's inbound webhook payload (https://postmarkapp.com/developer/webhooks/inbound-webhook).

Only what inboxsync reads is declared; Postmark's other fields are accepted and ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Postmark(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class PostmarkAddress(_Postmark):
    email: str = Field(alias="Email")
    name: str = Field(default="", alias="Name")
    mailbox_hash: str = Field(default="", alias="MailboxHash")


class PostmarkHeader(_Postmark):
    name: str = Field(alias="Name")
    value: str = Field(default="", alias="Value")


class PostmarkAttachment(_Postmark):
    name: str = Field(default="attachment", alias="Name")
    content: str = Field(default="", alias="Content")  # base64
    content_type: str = Field(default="application/octet-stream", alias="ContentType")
    content_length: int | None = Field(default=None, alias="ContentLength")
    content_id: str | None = Field(default=None, alias="ContentID")


class PostmarkInbound(_Postmark):
    message_id: str = Field(alias="MessageID", min_length=1)
    from_full: PostmarkAddress = Field(alias="FromFull")
    to_full: list[PostmarkAddress] = Field(default_factory=list, alias="ToFull")
    cc_full: list[PostmarkAddress] = Field(default_factory=list, alias="CcFull")
    reply_to: str = Field(default="", alias="ReplyTo")
    subject: str = Field(default="", alias="Subject")
    date: str = Field(default="", alias="Date")
    text_body: str = Field(default="", alias="TextBody")
    html_body: str = Field(default="", alias="HtmlBody")
    headers: list[PostmarkHeader] = Field(default_factory=list, alias="Headers")
    attachments: list[PostmarkAttachment] = Field(default_factory=list, alias="Attachments")
    # Present when the server has "include raw email content" on: then it is what is parsed.
    raw_email: str | None = Field(default=None, alias="RawEmail")
