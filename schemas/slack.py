"""Slack Events API requests, as an app's Request URL receives them: https://api.slack.com/apis/events-api

Every request is JSON with a ``type``: ``url_verification`` (the handshake when the Request URL is
set: answer its ``challenge``), ``event_callback`` (an event, wrapped with ``event_id``,
``team_id``, ``authorizations``), or another kind (``app_rate_limited``) that asks for nothing.

Only ``message`` events are read (https://api.slack.com/events/message), the ones the
``message.channels`` / ``message.groups`` / ``message.im`` / ``message.mpim`` subscriptions send:
plain ones, ``file_share``, ``thread_broadcast``, and the hidden ``message_changed`` /
``message_deleted`` whose ``message`` / ``previous_message`` is the message itself. Only what
inboxsync reads is declared (Slack adds fields without notice; ``blocks`` and the like are not
kept): what the edge journals is ``SlackCallback.model_dump``, nothing else of the request, so
the legacy verification ``token`` is never stored.

Ids are Slack's (``C…``, ``D…``, ``U…``, ``F…``): letters and digits. A ``ts`` is Slack's
message identity in its channel, seconds and microseconds as a string ("1355517523.000005").
Texts lose NUL characters (PostgreSQL cannot store them).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _no_nul(value: str) -> str:
    return value.replace("\x00", "\ufffd")


Text = Annotated[str, Field(max_length=1_000_000), AfterValidator(_no_nul)]
Name = Annotated[str, Field(max_length=500), AfterValidator(_no_nul)]
SlackId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def _within_datetime(value: str) -> str:
    if int(value.partition(".")[0]) > 253_402_300_799:  # 9999-12-31: what a datetime holds
        raise ValueError("a time past the year 9999")
    return value


Ts = Annotated[
    str,
    Field(max_length=30, pattern=r"^[0-9]{1,12}\.[0-9]{1,9}$"),
    AfterValidator(_within_datetime),
]
Url = Annotated[str, Field(max_length=2000), AfterValidator(_no_nul)]


class _Slack(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SlackEdited(_Slack):
    """``edited``: who edited the message and when (``ts``: the edit's time, Slack's clock)."""

    user: SlackId | None = None
    ts: Ts


class SlackFile(_Slack):
    """A file shared in a message (https://api.slack.com/types/file). Its bytes are behind
    ``url_private_download`` (or ``url_private``), fetched with the bot token; a file Slack
    does not show (``mode: "tombstone"``, ``hidden_by_limit``; Slack Connect's
    ``file_access: "check_file_info"``) has no URL."""

    id: SlackId
    name: Name | None = None
    title: Name | None = None
    mimetype: Name | None = None
    size: int | None = Field(default=None, ge=0, le=2**63 - 1)
    mode: Name | None = None
    file_access: Name | None = None
    url_private: Url | None = None
    url_private_download: Url | None = None


class SlackProfile(_Slack):
    """``user_profile``: Slack adds it to messages people write in its clients (not documented
    for every event, so optional: the contact then has no name)."""

    real_name: Name | None = None
    display_name: Name | None = None
    name: Name | None = None


class SlackMessage(_Slack):
    """A ``message`` event, or the message inside a ``message_changed`` / ``message_deleted``
    (which lack ``channel``: it is the outer event's). Fields every kind needs are checked by
    the adapter (handlers/channels/slack.py), which names the one missing."""

    type: Name = "message"
    subtype: Name | None = None
    hidden: bool | None = None
    channel: SlackId | None = None
    # "channel" (public), "group" (private), "im" (a DM), "mpim" (a group DM).
    channel_type: Name | None = None
    user: SlackId | None = None
    # Set on every message a bot or an app wrote (ours too: https://api.slack.com/events/message/bot_message).
    bot_id: SlackId | None = None
    app_id: SlackId | None = None
    text: Text | None = None
    ts: Ts | None = None
    thread_ts: Ts | None = None
    event_ts: Ts | None = None
    edited: SlackEdited | None = None
    files: list[SlackFile] = Field(default_factory=list, max_length=50)
    user_profile: SlackProfile | None = None
    # message_changed: the message as it is now, and as it was; message_deleted: what was gone.
    message: SlackMessage | None = None
    previous_message: SlackMessage | None = None
    deleted_ts: Ts | None = None


class SlackAuthorization(_Slack):
    """Who the event was sent for: with ``is_bot``, ``user_id`` is the app's bot user (whose
    own messages come back as events: echoes)."""

    team_id: SlackId | None = None
    user_id: SlackId | None = None
    is_bot: bool = False


class SlackCallback(_Slack):
    """An ``event_callback`` request, as far as inboxsync reads it; its ``event`` is a message
    (the edge does not journal other events)."""

    type: Name
    team_id: SlackId | None = None
    api_app_id: SlackId | None = None
    event_id: SlackId
    event_time: int | None = Field(default=None, ge=0, le=253_402_300_799)
    authorizations: list[SlackAuthorization] = Field(default_factory=list, max_length=100)
    event: SlackMessage


class SlackChallenge(_Slack):
    """``url_verification`` (https://api.slack.com/events/url_verification): answered with its
    ``challenge``."""

    type: Name
    challenge: Annotated[str, Field(min_length=1, max_length=500)]
