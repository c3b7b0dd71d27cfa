"""``GET /messages/{id}/attachments/{n}``: an attachment's bytes, from the blob store."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import select

from api.auth import Caller
from api.errors import ApiError, not_found
from schemas.types import Id
from store.blobs import blob_store
from store.db import reading
from store.models import Conversation, Message

router = APIRouter(tags=["conversations"])


@router.get(
    "/messages/{message_id}/attachments/{index}",
    response_class=Response,
    # Answered in the attachment's own type (image/png, …); octet-stream when it has none.
    responses={200: {"content": {"application/octet-stream": {}, "*/*": {}}}, 404: {}},
    summary="Download an attachment (n counts from 0, in the order the message lists them)",
)
def download(message_id: Id, index: Id, who: Caller) -> Response:
    with reading() as session:
        row = session.execute(
            select(Message.headers, Conversation.account_id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.id == message_id)
        ).first()
    if row is None or not who.sees(row.account_id):
        raise not_found("message", message_id)
    headers = row.headers or {}
    listed = (headers.get("email") or headers.get("chat") or {}).get("attachments") or []
    if not 0 <= index < len(listed):
        raise not_found("attachment", f"{message_id}/{index}")
    attachment = listed[index]
    data = blob_store().read(attachment["sha256"]) if attachment.get("stored", True) else None
    if data is None:
        raise ApiError(
            404, "not_kept", f"attachment {index} of message {message_id} was not kept (too large)"
        )
    filename = quote(attachment.get("filename") or "attachment")
    return Response(
        data,
        media_type=attachment.get("content_type") or "application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
            "X-Content-Type-Options": "nosniff",
            "ETag": f'"{attachment["sha256"]}"',
        },
    )
