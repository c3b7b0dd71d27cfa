"""Rows to API bodies, and the account lookups every route needs for tenancy checks."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.api import ConversationOut, MessageOut, TicketOut
from schemas.outbound import ReplyOut
from store.cases import aware
from store.models import Contact, Conversation, Message, Reply, Ticket


def conversation_out(
    session: Session, conv: Conversation, *, with_messages: bool = False
) -> ConversationOut:
    contact = session.scalar(select(Contact.handle).where(Contact.id == conv.contact_id)) or ""
    messages = None
    if with_messages:
        rows = session.scalars(
            select(Message)
            .where(Message.conversation_id == conv.id)
            .order_by(Message.sent_at, Message.id)
        ).all()
        replies = {
            r.message_id: (r.id, r.state)
            for r in session.execute(
                select(Reply.message_id, Reply.id, Reply.state).where(
                    Reply.conversation_id == conv.id
                )
            )
        }
        messages = [
            MessageOut(
                id=m.id,
                external_id=m.external_id,
                direction=m.direction,
                sender=m.sender,
                text=m.text,
                sent_at=m.sent_at,
                received_at=m.received_at,
                automatic=m.automatic,
                reply_id=replies.get(m.id, (None, None))[0],
                delivery=replies.get(m.id, (None, None))[1],
            )
            for m in rows
        ]
    return ConversationOut(
        id=conv.id,
        account_id=conv.account_id,
        inbox_id=conv.inbox_id,
        contact=contact,
        thread_key=conv.thread_key,
        owner_id=conv.owner_id,
        status=conv.status,  # type: ignore[arg-type]
        location=conv.location,  # type: ignore[arg-type]
        ticket_id=conv.ticket_id,
        trashed=conv.removed_by is not None,
        removed_at=conv.removed_at,
        created_at=conv.created_at,
        last_message_at=conv.last_message_at,
        messages=messages,
    )


def ticket_out(session: Session, ticket: Ticket) -> TicketOut:
    conv_ids = session.scalars(
        select(Conversation.id).where(Conversation.ticket_id == ticket.id).order_by(Conversation.id)
    ).all()
    return TicketOut(
        id=ticket.id,
        account_id=ticket.account_id,
        owner_id=ticket.owner_id,
        status=ticket.status,  # type: ignore[arg-type]
        priority=ticket.priority,
        properties=ticket.properties,
        location=ticket.location,  # type: ignore[arg-type]
        deleted=ticket.removed_by is not None,
        removed_at=ticket.removed_at,
        created_at=ticket.created_at,
        conversation_ids=list(conv_ids),
    )


def reply_out(reply: Reply) -> ReplyOut:
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
        error=reply.error,
        created_at=aware(reply.created_at),
        sent_at=aware(reply.sent_at) if reply.sent_at else None,
        next_attempt_at=aware(reply.next_attempt_at) if reply.next_attempt_at else None,
    )


def account_of(session: Session, entity: str, entity_id: int) -> int | None:
    if entity == "conversation":
        return session.scalar(select(Conversation.account_id).where(Conversation.id == entity_id))
    return session.scalar(select(Ticket.account_id).where(Ticket.id == entity_id))
