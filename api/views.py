"""Rows to API bodies. A page costs a fixed number of queries, whatever its length: a list of
conversations is one query (contact and message count joined in), its tickets' conversation ids
one more; a conversation's messages are one query with their replies' delivery states."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from schemas.api import AttachmentOut, ConversationOut, MessageOut, TicketOut
from schemas.outbound import ReplyOut
from store.models import Contact, Conversation, Message, Reply, Ticket

_MESSAGE_COUNT = (
    select(func.count(Message.id))
    .where(Message.conversation_id == Conversation.id)
    .correlate(Conversation)
    .scalar_subquery()
)


def conversations(
    session: Session, where: list[ColumnElement[bool]], *, limit: int | None = None
) -> list[ConversationOut]:
    """The conversations matching ``where``, by id, in one query."""
    query = (
        select(
            Conversation,
            Contact.handle.label("contact"),
            _MESSAGE_COUNT.label("message_count"),
        )
        .join(Contact, Contact.id == Conversation.contact_id)
        .where(*where)
        .order_by(Conversation.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [_conversation(row) for row in session.execute(query)]


def _conversation(row: Any) -> ConversationOut:
    conv: Conversation = row.Conversation
    return ConversationOut(
        id=conv.id,
        account_id=conv.account_id,
        inbox_id=conv.inbox_id,
        contact_id=conv.contact_id,
        contact=row.contact,
        thread_key=conv.thread_key,
        owner_id=conv.owner_id,
        status=conv.status,  # type: ignore[arg-type]
        location=conv.location,  # type: ignore[arg-type]
        ticket_id=conv.ticket_id,
        trashed=conv.removed_by is not None and conv.merged_into is None,
        merged_into=conv.merged_into,
        removed_at=conv.removed_at,
        created_at=conv.created_at,
        last_message_at=conv.last_message_at,
        message_count=row.message_count,
    )


def conversation(session: Session, conversation_id: int) -> ConversationOut | None:
    """One conversation with its messages, in the order they were stored."""
    found = conversations(session, [Conversation.id == conversation_id])
    if not found:
        return None
    found[0].messages = messages(session, [Message.conversation_id == conversation_id])
    return found[0]


def messages(
    session: Session, where: list[ColumnElement[bool]], *, limit: int | None = None
) -> list[MessageOut]:
    query = (
        select(Message, Reply.id.label("reply_id"), Reply.state.label("delivery"))
        .outerjoin(Reply, Reply.message_id == Message.id)
        .where(*where)
        .order_by(Message.stored_at, Message.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [message(row.Message, row.reply_id, row.delivery) for row in session.execute(query)]


def message(m: Message, reply_id: int | None = None, delivery: str | None = None) -> MessageOut:
    """The whole message: what the channel parsed (mail: addresses, subject, sanitized HTML,
    attachments) is kept with it and shown here."""
    mail: dict[str, Any] = (m.headers or {}).get("email") or {}
    threading: dict[str, Any] = (m.headers or {}).get("threading") or {}
    chat: dict[str, Any] = (m.headers or {}).get("chat") or {}
    attachments = [
        AttachmentOut(
            index=n,
            filename=a.get("filename") or "attachment",
            content_type=a.get("content_type") or "application/octet-stream",
            size=a.get("size", 0),
            sha256=a.get("sha256", ""),
            inline=a.get("inline", False),
            content_id=a.get("content_id"),
            stored=a.get("stored", True),
            url=f"/messages/{m.id}/attachments/{n}" if a.get("stored", True) else None,
        )
        for n, a in enumerate(mail.get("attachments") or chat.get("attachments") or [])
    ]
    return MessageOut(
        id=m.id,
        conversation_id=m.conversation_id,
        inbox_id=m.inbox_id,
        external_id=m.external_id,
        provider_id=m.provider_id,
        message_id=mail.get("message_id"),
        direction=m.direction,  # type: ignore[arg-type]
        sender=m.sender,
        from_=mail.get("from") or mail.get("from_"),  # parsed mail keeps "from_"
        to=mail.get("to") or [],
        cc=mail.get("cc") or [],
        reply_to=mail.get("reply_to") or [],
        subject=mail.get("subject"),
        text=m.text,
        visible_text=mail.get("visible_text"),
        html=mail.get("html_safe"),
        in_reply_to=_listed(mail.get("in_reply_to")),
        references=_listed(mail.get("references")),
        attachments=attachments,
        problems=mail.get("problems") or chat.get("problems") or [],
        automatic=m.automatic,
        also_in=threading.get("also_in") or [],
        sent_at=m.sent_at,
        received_at=m.received_at,
        stored_at=m.stored_at,
        edited_at=m.edited_at,
        deleted=m.deleted_at is not None,
        reply_id=reply_id,
        delivery=delivery,  # type: ignore[arg-type]
    )


def _listed(value: Any) -> list[str]:
    """Parsed mail keeps id lists; a composed reply keeps its In-Reply-To as one id."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def tickets(
    session: Session, where: list[ColumnElement[bool]], *, limit: int | None = None
) -> list[TicketOut]:
    """The tickets matching ``where``, by id, with their conversations' ids: two queries."""
    query = select(Ticket).where(*where).order_by(Ticket.id)
    if limit is not None:
        query = query.limit(limit)
    rows = session.scalars(query).all()
    members: dict[int, list[int]] = defaultdict(list)
    if rows:
        pairs = session.execute(
            select(Conversation.ticket_id, Conversation.id)
            .where(Conversation.ticket_id.in_([t.id for t in rows]))
            .order_by(Conversation.id)
        )
        for row in pairs:
            members[row.ticket_id].append(row.id)
    return [
        TicketOut(
            id=t.id,
            account_id=t.account_id,
            owner_id=t.owner_id,
            status=t.status,  # type: ignore[arg-type]
            priority=t.priority,
            properties=t.properties,
            location=t.location,  # type: ignore[arg-type]
            deleted=t.removed_by is not None,
            removed_at=t.removed_at,
            created_at=t.created_at,
            conversation_ids=members[t.id],
        )
        for t in rows
    ]


def reply_out(reply: Reply, statuses: dict[tuple[int, str], str] | None = None) -> ReplyOut:
    """A reply and its delivery; ``statuses``: what chat providers reported, by (inbox, their
    message id)."""
    mail = reply.mail
    return ReplyOut(
        id=reply.id,
        conversation_id=reply.conversation_id,
        message_id=reply.message_id,
        state=reply.state,  # type: ignore[arg-type]
        via=reply.via,
        rfc_message_id=reply.rfc_message_id,
        to=[a["email"] for a in mail.get("to", [])],
        subject=mail.get("subject", ""),
        attempts=reply.attempts,
        provider_message_id=reply.provider_message_id,
        provider_status=(statuses or {}).get(  # type: ignore[arg-type]
            (reply.inbox_id, reply.provider_message_id or "")
        ),
        error=reply.error,
        created_at=reply.created_at,
        sent_at=reply.sent_at,
        next_attempt_at=reply.next_attempt_at,
    )


def account_of(session: Session, entity: str, entity_id: int) -> int | None:
    if entity == "conversation":
        return session.scalar(select(Conversation.account_id).where(Conversation.id == entity_id))
    return session.scalar(select(Ticket.account_id).where(Ticket.id == entity_id))


def page(rows: list[Any], limit: int) -> dict[str, Any]:
    """``rows`` read with ``limit + 1`` as a page of ``limit`` (schemas/api.py ``Page``)."""
    items = rows[:limit]
    last = items[-1] if items else None
    last_id = last["id"] if isinstance(last, dict) else getattr(last, "id", None)
    return {"items": items, "next_after_id": last_id if len(rows) > limit else None}
