"""The rules of DESIGN.md on the pure fold (handlers/rules.py): no database, no Celery.

Each test is named after the rule it checks. The routing rules R1/R2 are checked on
``handlers.routing`` here and through the store and the API in test_apply.py and test_api.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from handlers import routing, rules
from handlers.rules import Case, ConversationState, RuleRefusal, TicketState
from schemas import changes as c
from settings import Settings


def case(*conversations: tuple[int, int | None], tickets: tuple[int, ...] = ()) -> Case:
    """``case((1, 10), (2, 10), (3, None), tickets=(10,))``: conversations (id, ticket id)."""
    return Case(
        conversations={cid: ConversationState(id=cid, ticket_id=tid) for cid, tid in conversations},
        tickets={tid: TicketState(id=tid) for tid in tickets},
    )


def run(k: Case, action: c.Action, change_id: str = "chg-1") -> list[rules.Effect]:
    return rules.apply(k, change_id, action)


def rules_of(effects: list[rules.Effect]) -> set[str]:
    return {e.rule for e in effects}


# T1 ---------------------------------------------------------------------------------------


def test_T1_creating_a_ticket_associates_the_conversation():
    k = case((1, None))
    effects = run(k, c.CreateTicket(conversation_id=1, ticket_id=10, location="inbox"))
    assert k.conversations[1].ticket_id == 10
    assert k.tickets[10].status == "new"
    assert ("ticket", 10, "created") in {(e.entity, e.entity_id, e.field) for e in effects}


def test_T1_asking_again_returns_the_existing_ticket_and_changes_nothing():
    k = case((1, 10), tickets=(10,))
    assert run(k, c.CreateTicket(conversation_id=1, ticket_id=11, location="inbox")) == []
    assert k.conversations[1].ticket_id == 10
    assert set(k.tickets) == {10}


def test_T1_a_conversation_of_another_ticket_cannot_be_associated():
    k = case((1, 10), (2, 20), tickets=(10, 20))
    with pytest.raises(RuleRefusal) as refused:
        run(k, c.AssociateConversation(ticket_id=10, conversation_id=2))
    assert refused.value.rule == "T1"
    assert k.conversations[2].ticket_id == 20


# T2 ---------------------------------------------------------------------------------------


def test_T2_dissociation_is_refused():
    k = case((1, 10), tickets=(10,))
    with pytest.raises(RuleRefusal) as refused:
        run(k, c.DissociateConversation(ticket_id=10, conversation_id=1))
    assert refused.value.rule == "T2"
    assert k.conversations[1].ticket_id == 10


# T3 ---------------------------------------------------------------------------------------


def test_T3_a_ticket_holds_several_conversations_which_follow_its_location():
    k = case((1, 10), (2, None), tickets=(10,))
    k.tickets[10].location = "help_desk"
    effects = run(k, c.AssociateConversation(ticket_id=10, conversation_id=2))
    assert [cv.id for cv in k.conversations_of(10)] == [1, 2]
    assert k.conversations[2].location == "help_desk"
    assert rules_of(effects) == {"T3"}


def test_T3_associating_twice_is_a_no_op():
    k = case((1, 10), tickets=(10,))
    assert run(k, c.AssociateConversation(ticket_id=10, conversation_id=1)) == []


# R1 / R2 ----------------------------------------------------------------------------------

CUTOFF = datetime(2024, 4, 1, tzinfo=UTC)
HELPDESK = frozenset({"professional", "enterprise"})


@pytest.mark.parametrize("tier", ["professional", "enterprise"])
def test_R1_helpdesk_tiers_created_on_or_after_the_cutoff_go_to_the_help_desk(tier):
    for created in (CUTOFF, CUTOFF + timedelta(days=300)):
        where = routing.ticket_location(tier, created, cutoff=CUTOFF, helpdesk_tiers=HELPDESK)
        assert where == "help_desk"
    assert routing.queue_for("help_desk") == "helpdesk"


@pytest.mark.parametrize(
    ("tier", "created"),
    [
        ("free", CUTOFF + timedelta(days=1)),
        ("starter", CUTOFF + timedelta(days=1)),
        ("free", CUTOFF - timedelta(days=1)),
        ("professional", CUTOFF - timedelta(microseconds=1)),
        ("enterprise", datetime(2020, 1, 1, tzinfo=UTC)),
    ],
)
def test_R2_other_accounts_stay_in_the_inbox(tier, created):
    assert routing.ticket_location(tier, created, cutoff=CUTOFF, helpdesk_tiers=HELPDESK) == "inbox"
    assert routing.queue_for("inbox") == "inbox"


def test_R1_the_cutoff_and_the_tier_set_are_settings():
    s = Settings(
        helpdesk_cutoff=datetime(2030, 1, 1, tzinfo=UTC), helpdesk_tiers=frozenset({"starter"})
    )
    created = datetime(2031, 1, 1, tzinfo=UTC)
    assert s.helpdesk_tiers == {"starter"}
    assert (
        routing.ticket_location(
            "starter", created, cutoff=s.helpdesk_cutoff, helpdesk_tiers=s.helpdesk_tiers
        )
        == "help_desk"
    )


def test_R1_moves_the_conversation_too():
    k = case((1, None))
    effects = run(k, c.CreateTicket(conversation_id=1, ticket_id=10, location="help_desk"))
    assert k.tickets[10].location == "help_desk"
    assert k.conversations[1].location == "help_desk"
    assert "R1" in rules_of(effects)


# O1 / O2 ----------------------------------------------------------------------------------


def test_O1_a_conversations_owner_becomes_its_tickets_owner():
    k = case((1, 10), (2, 10), tickets=(10,))
    effects = run(k, c.SetConversationOwner(conversation_id=1, owner_id=7))
    assert k.tickets[10].owner_id == 7
    assert k.conversations[2].owner_id is None  # the other conversation is not the subject
    assert rules_of(effects) == {"owner", "O1"}


def test_O1_without_a_ticket_only_the_conversation_changes():
    k = case((1, None))
    assert rules_of(run(k, c.SetConversationOwner(conversation_id=1, owner_id=7))) == {"owner"}


def test_O2_a_tickets_owner_never_touches_conversations():
    k = case((1, 10), (2, 10), tickets=(10,))
    k.conversations[1].owner_id = 3
    effects = run(k, c.SetTicketOwner(ticket_id=10, owner_id=7))
    assert k.tickets[10].owner_id == 7
    assert [cv.owner_id for cv in k.conversations_of(10)] == [3, None]
    assert [e.entity for e in effects] == ["ticket"]


def test_O1_does_not_echo_back_through_O2():
    k = case((1, 10), (2, 10), tickets=(10,))
    run(k, c.SetConversationOwner(conversation_id=1, owner_id=7))
    assert k.conversations[2].owner_id is None


# S1 / S2 / S3 -----------------------------------------------------------------------------


def test_S1_closing_a_ticket_closes_every_conversation():
    k = case((1, 10), (2, 10), (3, None), tickets=(10,))
    effects = run(k, c.SetTicketStatus(ticket_id=10, status="closed"))
    assert [cv.status for cv in k.conversations_of(10)] == ["closed", "closed"]
    assert k.conversations[3].status == "open"
    assert rules_of(effects) == {"status", "S1"}


def test_S1_does_not_echo_back_to_the_ticket():
    k = case((1, 10), tickets=(10,))
    effects = run(k, c.SetTicketStatus(ticket_id=10, status="closed"))
    assert [(e.entity, e.field) for e in effects].count(("ticket", "status")) == 1


def test_S2_reopening_a_ticket_with_exactly_one_conversation_reopens_it():
    k = case((1, 10), tickets=(10,))
    run(k, c.SetTicketStatus(ticket_id=10, status="closed"))
    effects = run(k, c.SetTicketStatus(ticket_id=10, status="waiting_on_us"), "chg-2")
    assert k.conversations[1].status == "open"
    assert "S2" in rules_of(effects)


def test_S2_with_several_conversations_none_reopens():
    k = case((1, 10), (2, 10), tickets=(10,))
    run(k, c.SetTicketStatus(ticket_id=10, status="closed"))
    effects = run(k, c.SetTicketStatus(ticket_id=10, status="new"), "chg-2")
    assert [cv.status for cv in k.conversations_of(10)] == ["closed", "closed"]
    assert rules_of(effects) == {"status"}


def test_S2_only_when_the_ticket_was_closed():
    k = case((1, 10), tickets=(10,))
    k.conversations[1].status = "closed"  # closed by S3, ticket still open
    run(k, c.SetTicketStatus(ticket_id=10, status="waiting_on_contact"))
    assert k.conversations[1].status == "closed"


def test_S2_a_deleted_single_conversation_is_not_reopened():
    k = case((1, 10), tickets=(10,))
    k.tickets[10].status = "closed"
    k.conversations[1].status = "closed"
    k.conversations[1].removed_by = "x"
    k.tickets[10].removed_by = None  # only the conversation is gone (cannot happen via D1)
    run(k, c.SetTicketStatus(ticket_id=10, status="new"))
    assert k.conversations[1].status == "closed"


def test_S3_closing_a_conversation_touches_nothing_else():
    k = case((1, 10), (2, 10), tickets=(10,))
    effects = run(k, c.SetConversationStatus(conversation_id=1, status="closed"))
    assert k.conversations[1].status == "closed"
    assert k.conversations[2].status == "open"
    assert k.tickets[10].status == "new"
    assert [(e.entity, e.entity_id) for e in effects] == [("conversation", 1)]


# D1 / D2 and restore ----------------------------------------------------------------------


def test_D1_trashing_a_conversation_deletes_its_ticket():
    k = case((1, 10), tickets=(10,))
    effects = run(k, c.TrashConversation(conversation_id=1), "trash-1")
    assert k.tickets[10].removed_by == "trash-1"
    assert "D1" in rules_of(effects)


def test_D2_deleting_a_ticket_deletes_its_conversations():
    k = case((1, 10), (2, 10), (3, None), tickets=(10,))
    effects = run(k, c.DeleteTicket(ticket_id=10), "del-1")
    assert [cv.removed_by for cv in k.conversations_of(10)] == ["del-1", "del-1"]
    assert k.conversations[3].removed_by is None
    assert rules_of(effects) == {"delete", "D2"}


def test_D1_and_D2_compose_trashing_one_conversation_removes_all():
    k = case((1, 10), (2, 10), (3, 10), tickets=(10,))
    effects = run(k, c.TrashConversation(conversation_id=2), "trash-2")
    assert k.tickets[10].removed_by == "trash-2"
    assert {cv.removed_by for cv in k.conversations_of(10)} == {"trash-2"}
    assert rules_of(effects) == {"trash", "D1", "D2"}


def test_D_restore_brings_back_what_the_same_cascade_removed_and_nothing_else():
    k = case((1, 10), (2, 10), tickets=(10,))
    # Conversation 3 was removed by an earlier cascade (say, before it joined this ticket).
    k.conversations[3] = ConversationState(id=3, ticket_id=10, removed_by="earlier-trash")
    run(k, c.DeleteTicket(ticket_id=10), "del-1")
    effects = run(k, c.RestoreTicket(ticket_id=10), "restore-1")
    assert k.tickets[10].removed_by is None
    assert [cv.removed_by for cv in k.conversations_of(10)] == [None, None, "earlier-trash"]
    assert rules_of(effects) == {"restore"}


def test_D_restore_through_any_member_of_the_cascade():
    k = case((1, 10), (2, 10), tickets=(10,))
    run(k, c.TrashConversation(conversation_id=1), "trash-1")
    run(k, c.RestoreConversation(conversation_id=2), "restore-1")
    assert k.tickets[10].removed_by is None
    assert {cv.removed_by for cv in k.conversations_of(10)} == {None}


def test_D_trashing_twice_is_a_no_op_and_deleted_things_refuse_changes():
    k = case((1, 10), tickets=(10,))
    run(k, c.TrashConversation(conversation_id=1), "trash-1")
    assert run(k, c.TrashConversation(conversation_id=1), "trash-2") == []
    assert k.tickets[10].removed_by == "trash-1"
    with pytest.raises(RuleRefusal, match="deleted"):
        run(k, c.SetTicketStatus(ticket_id=10, status="closed"))


# Inbound messages (DESIGN.md, behaviour where the seed is silent) -------------------------


def test_a_message_on_a_closed_conversation_reopens_it_and_its_closed_ticket():
    k = case((1, 10), tickets=(10,))
    run(k, c.SetTicketStatus(ticket_id=10, status="closed"))
    effects = run(k, c.MessageReceived(conversation_id=1), "message:1")
    assert k.conversations[1].status == "open"
    assert k.tickets[10].status == "waiting_on_us"
    assert rules_of(effects) == {"M1"}


def test_a_message_reopens_only_its_conversation_when_the_ticket_has_several():
    k = case((1, 10), (2, 10), tickets=(10,))
    run(k, c.SetTicketStatus(ticket_id=10, status="closed"))
    run(k, c.MessageReceived(conversation_id=2), "message:1")
    assert [cv.status for cv in k.conversations_of(10)] == ["closed", "open"]
    assert k.tickets[10].status == "closed"  # M1: only a ticket that holds only it reopens


def test_M1_a_message_on_an_open_conversation_leaves_its_closed_ticket_closed():
    """docs/rules.md M1 fires on a message "stored on a closed conversation": an agent reopened
    the only conversation of a closed ticket (S3: only it), and a message changes nothing."""
    k = case((1, 10), tickets=(10,))
    run(k, c.SetTicketStatus(ticket_id=10, status="closed"))
    run(k, c.SetConversationStatus(conversation_id=1, status="open"))
    assert run(k, c.MessageReceived(conversation_id=1), "message:1") == []
    assert k.tickets[10].status == "closed"


def test_unknown_objects_are_refused_as_not_found():
    with pytest.raises(RuleRefusal) as refused:
        run(case(), c.SetTicketStatus(ticket_id=99, status="closed"))
    assert refused.value.status == 404
