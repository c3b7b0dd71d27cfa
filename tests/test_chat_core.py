"""What every chat provider builds on (tests/test_<provider>.py test each one's format):
the reopen window, edits and deletions in order, provider delivery statuses, contact names."""

from __future__ import annotations

from sqlalchemy import select

from handlers import edits
from handlers.outbound import statuses
from schemas import changes as c
from schemas.inbound import DeliveryUpdate, MessageEdit
from store.db import reading, transaction
from store.models import Contact, Conversation, Inbox, Message, MessageRevision, ProviderStatus
from tests.storehelp import at, change, inbound, run, state, store

DAY = 86400.0


def chat_inbox(acct: dict[str, int]) -> int:
    with transaction() as session:
        inbox = session.get_one(Inbox, acct["inbox"])
        inbox.channel = "chat"
    return acct["inbox"]


def closed_chat(acct: dict[str, int]) -> int:
    inbox = chat_inbox(acct)
    conv = store(inbound(inbox, "m1", thread="wa:+351910000000", sent=0))[0].conversation_id
    assert conv is not None
    close = c.SetConversationStatus(conversation_id=conv, status="closed")
    run(change("close", acct["account"], close, 10))
    return conv


def test_a_chat_closed_within_the_window_is_reopened_by_a_new_message(make_account):
    acct = make_account()
    conv = closed_chat(acct)
    again = store(inbound(acct["inbox"], "m2", thread="wa:+351910000000"), stored=10 + DAY)[0]
    assert again.conversation_id == conv
    assert state([conv])["conversations"][0][1] == "open"


def test_a_chat_closed_longer_than_the_window_starts_a_new_conversation(make_account):
    acct = make_account()
    conv = closed_chat(acct)
    later = store(inbound(acct["inbox"], "m2", thread="wa:+351910000000"), stored=10 + 8 * DAY)[0]
    assert later.conversation_id != conv
    assert state([conv])["conversations"][0][1] == "closed"  # left as it was
    after = store(inbound(acct["inbox"], "m3", thread="wa:+351910000000"), stored=11 + 8 * DAY)
    assert after[0].conversation_id == later.conversation_id  # the thread moved to the new one


def test_the_reopen_window_is_the_setting(make_account, monkeypatch):
    from settings import get_settings

    monkeypatch.setattr(get_settings(), "chat_reopen_days", 30)
    acct = make_account()
    conv = closed_chat(acct)
    later = store(inbound(acct["inbox"], "m2", thread="wa:+351910000000"), stored=10 + 8 * DAY)
    assert later[0].conversation_id == conv


def test_mail_has_no_reopen_window(make_account):
    acct = make_account()  # an email inbox
    conv = store(inbound(acct["inbox"], "m1", thread="t"))[0].conversation_id
    assert conv is not None
    close = c.SetConversationStatus(conversation_id=conv, status="closed")
    run(change("close", acct["account"], close, 10))
    assert (
        store(inbound(acct["inbox"], "m2", thread="t"), stored=90 * DAY)[0].conversation_id == conv
    )


def edit(inbox: int, target: str, event: str, text: str | None, seconds: float) -> MessageEdit:
    return MessageEdit(
        inbox_id=inbox,
        external_id=target,
        event_id=event,
        text=text,
        deleted=text is None,
        edited_at=at(seconds),
        received_at=at(seconds + 1),
    )


def apply_edits(*items: MessageEdit) -> list[edits.EditOutcome]:
    with transaction() as session:
        return edits.apply(session, list(items))


def text_of(external_id: str) -> tuple[str, bool]:
    with reading() as session:
        m = session.scalars(select(Message).where(Message.external_id == external_id)).one()
        return m.text, m.deleted_at is not None


def test_edits_apply_once_and_in_the_providers_order(make_account):
    acct = make_account()
    store(inbound(acct["inbox"], "m1", text="helo"))
    newer, older = (
        edit(acct["inbox"], "m1", "e2", "hello!", 20),
        edit(acct["inbox"], "m1", "e1", "hello", 10),
    )
    apply_edits(newer)
    apply_edits(older)  # late: older than what the message shows
    assert text_of("m1") == ("hello!", False)
    [again] = apply_edits(newer)
    assert again.duplicate is True
    with reading() as session:
        revisions = session.scalars(select(MessageRevision).order_by(MessageRevision.id)).all()
    assert [(r.event_id, r.previous_text, r.applied) for r in revisions] == [
        ("e2", "helo", True),
        ("e1", None, True),
    ]


def test_a_deletion_is_final_and_keeps_an_audit_record(make_account):
    acct = make_account()
    store(inbound(acct["inbox"], "m1", text="my card number is 4111"))
    apply_edits(edit(acct["inbox"], "m1", "d1", None, 30))
    apply_edits(edit(acct["inbox"], "m1", "e9", "resurrected?", 40))
    assert text_of("m1") == ("", True)
    with reading() as session:
        kept = session.scalars(select(MessageRevision.text).where(MessageRevision.deleted)).all()
    assert kept == [None]  # the deletion is recorded; the text is not kept


def test_an_edit_before_its_message_waits_for_it(make_account):
    from handlers import journal, pipeline

    acct = make_account()
    [early] = apply_edits(edit(acct["inbox"], "m1", "e1", "edited first", 5))
    assert early.message_id is None
    payload = {
        "external_id": "m1",
        "sender": "maria@example.com",
        "thread_key": "t",
        "text": "original",
        "sent_at": at(0).isoformat(),
    }
    pipeline.ingest_deliveries([journal.delivery(acct["inbox"], "generic", payload)], None)
    assert text_of("m1") == ("edited first", False)


def status(provider_id: str, state_: str, seconds: float) -> DeliveryUpdate:
    return DeliveryUpdate(
        inbox_id=1,
        provider_message_id=provider_id,
        state=state_,
        at=at(seconds),  # type: ignore[arg-type]
    )


def test_delivery_statuses_only_move_forward_whatever_their_order(db):
    with transaction() as session:
        statuses.record(session, [status("SM1", "read", 3), status("SM1", "delivered", 2)])
        statuses.record(session, [status("SM1", "sent", 1), status("SM2", "failed", 1)])
        statuses.record(session, [status("SM2", "delivered", 2)])
    with reading() as session:
        rows = session.execute(
            select(ProviderStatus.provider_message_id, ProviderStatus.state)
        ).all()
    assert sorted((r.provider_message_id, r.state) for r in rows) == [
        ("SM1", "read"),
        ("SM2", "failed"),
    ]


def test_a_contact_keeps_the_name_it_was_first_seen_with(make_account):
    acct = make_account()
    first = inbound(acct["inbox"], "m1", sender="+351910000000", thread="a")
    store(first.model_copy(update={"contact_name": "Maria"}))
    second = inbound(acct["inbox"], "m2", sender="+351910000000", thread="b")
    store(second.model_copy(update={"contact_name": "M."}))
    with reading() as session:
        names = session.scalars(select(Contact.name)).all()
        convs = session.scalars(select(Conversation.contact_id)).all()
    assert names == ["Maria"] and len(set(convs)) == 1
