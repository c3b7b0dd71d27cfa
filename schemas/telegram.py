"""Telegram Bot API updates, as a bot's webhook receives them: https://core.telegram.org/bots/api#update

Only what inboxsync reads is declared; Telegram's other fields (entities, reply markup, …) are
accepted and ignored, and so are update kinds other than the ones below (the edge answers them
2xx with nothing stored: Telegram redelivers whatever it got no 2xx for).

- ``message`` / ``edited_message``: a chat with the bot (private, group or supergroup);
- ``business_message`` / ``edited_business_message`` / ``deleted_business_messages``: chats of a
  Telegram Business account the bot is connected to (https://core.telegram.org/bots/api#businessconnection),
  answered on the business account's behalf; the only kind whose deletions Telegram announces.

Integers are bounded to 64 bits (Telegram's ids have at most 52 significant bits): a larger one
is a 422 at the edge, not an error later when the payload is journaled.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
# Unix seconds up to the year 9999: what a datetime can hold.
UnixTime = Annotated[int, Field(ge=0, le=253_402_300_799)]


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; in a customer's text it is noise, not meaning.
    return value.replace("\x00", "\ufffd")


Text = Annotated[str, Field(max_length=1_000_000), AfterValidator(_no_nul)]
Name = Annotated[str, Field(max_length=500), AfterValidator(_no_nul)]
FileId = Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[A-Za-z0-9_-]+$")]


class _Telegram(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TgUser(_Telegram):
    id: Int64
    is_bot: bool = False
    first_name: Name = ""
    last_name: Name | None = None
    username: Name | None = None


class TgChat(_Telegram):
    id: Int64
    type: Name = "private"  # private, group, supergroup, channel
    title: Name | None = None
    username: Name | None = None


class TgPhotoSize(_Telegram):
    file_id: FileId
    file_unique_id: Name = ""
    width: Int64 = 0
    height: Int64 = 0
    file_size: Int64 | None = None


class TgFile(_Telegram):
    """Document, Voice, Audio, Video, VideoNote, Animation, Sticker: the fields they share."""

    file_id: FileId
    file_unique_id: Name = ""
    file_name: Name | None = None
    mime_type: Name | None = None
    file_size: Int64 | None = None


class TgLocation(_Telegram):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class TgContact(_Telegram):
    phone_number: Name = ""
    first_name: Name = ""
    last_name: Name | None = None


class TgMessage(_Telegram):
    message_id: Int64
    # Forum supergroups: the topic the message is in (a reply goes to the same topic).
    message_thread_id: Int64 | None = None
    from_: TgUser | None = Field(default=None, alias="from")
    sender_chat: TgChat | None = None
    date: UnixTime
    chat: TgChat
    edit_date: UnixTime | None = None
    business_connection_id: Name | None = None
    # Set on a business chat's message the bot itself sent on the business account's behalf.
    sender_business_bot: TgUser | None = None
    text: Text | None = None
    caption: Text | None = None
    photo: list[TgPhotoSize] = Field(default_factory=list, max_length=50)
    document: TgFile | None = None
    voice: TgFile | None = None
    audio: TgFile | None = None
    video: TgFile | None = None
    video_note: TgFile | None = None
    animation: TgFile | None = None
    sticker: TgFile | None = None
    location: TgLocation | None = None
    contact: TgContact | None = None


class TgDeletedBusinessMessages(_Telegram):
    business_connection_id: Name
    chat: TgChat
    message_ids: list[Int64] = Field(max_length=1000)


class TgUpdate(_Telegram):
    update_id: Int64
    message: TgMessage | None = None
    edited_message: TgMessage | None = None
    business_message: TgMessage | None = None
    edited_business_message: TgMessage | None = None
    deleted_business_messages: TgDeletedBusinessMessages | None = None


class TgFileAnswer(_Telegram):
    """``getFile``'s ``result`` (https://core.telegram.org/bots/api#file)."""

    file_id: str = ""
    file_size: int | None = None
    # Valid for at least an hour; the download URL is .../file/bot<token>/<file_path>.
    file_path: str = Field(min_length=1, max_length=1000)


class TgAnswer(_Telegram):
    """Every Bot API answer: ``ok``, then ``result`` or ``description`` (and ``parameters``)."""

    ok: bool
    result: dict[str, object] | None = None
    description: str | None = None
