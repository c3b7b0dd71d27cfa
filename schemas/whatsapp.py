"""WhatsApp Cloud API webhooks: https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages

A POST carries ``entry[].changes[]``; a change of ``field: "messages"`` has ``value.metadata``
(our ``phone_number_id``), ``contacts[]`` (``wa_id``, ``profile.name``), ``messages[]`` (what
customers wrote) and ``statuses[]`` (news of what we sent). Other fields (templates, account
updates, ``smb_message_echoes``: what the business itself sent from the WhatsApp Business app)
are not read. Only what inboxsync reads is declared; Meta's other fields are ignored, as Meta
asks of consumers (it adds fields without notice).

The edge journals one payload per message and one per status (``WaMessageItem``,
``WaStatusItem``), with the change's metadata and the sender's contact copied in. Texts lose NUL
characters (PostgreSQL cannot store them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _no_nul(value: str) -> str:
    return value.replace("\x00", "\ufffd")


Text = Annotated[str, Field(max_length=1_000_000), AfterValidator(_no_nul)]
Name = Annotated[str, Field(max_length=500), AfterValidator(_no_nul)]
# A wa_id is the customer's number, digits only; kept loose (Meta is adding other user ids).
UserId = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_no_nul)]
# A wamid (about 60 characters); bounded so that ``whatsapp:<wamid>`` fits an external id.
MessageId = Annotated[str, Field(min_length=1, max_length=400), AfterValidator(_no_nul)]
# Ids that go into a Graph API URL path: nothing that could change the path.
GraphId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")]
# Unix seconds (Meta writes them as strings) up to the year 9999.
UnixTime = Annotated[int, Field(ge=0, le=253_402_300_799)]


class _Wa(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class WaProfile(_Wa):
    name: Name | None = None


class WaContact(_Wa):
    wa_id: UserId
    profile: WaProfile | None = None


class WaText(_Wa):
    body: Text = ""


class WaMedia(_Wa):
    """image, video, audio, document, sticker: a media id to look up, and what Meta says of it."""

    id: GraphId
    mime_type: Annotated[str, Field(max_length=200), AfterValidator(_no_nul)] | None = None
    caption: Text | None = None
    filename: Name | None = None
    sha256: Name | None = None


class WaLocation(_Wa):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: Name | None = None
    address: Name | None = None


class WaReplyChoice(_Wa):
    id: Name = ""
    title: Name = ""


class WaInteractive(_Wa):
    """A tap on a reply button or a list row of one of our interactive messages."""

    type: Name = ""
    button_reply: WaReplyChoice | None = None
    list_reply: WaReplyChoice | None = None


class WaButton(_Wa):
    """A tap on a quick-reply button of one of our template messages."""

    text: Name = ""
    payload: Name | None = None


class WaEditedContent(_Wa):
    """``edit.message``: the message as it reads after the edit (its text or its caption)."""

    type: Name = ""
    text: WaText | None = None
    image: WaMedia | None = None
    video: WaMedia | None = None
    document: WaMedia | None = None


class WaEdit(_Wa):
    original_message_id: MessageId
    message: WaEditedContent = WaEditedContent()


class WaRevoke(_Wa):
    original_message_id: MessageId


class WaMessage(_Wa):
    from_: UserId = Field(alias="from")
    id: MessageId
    timestamp: UnixTime
    type: Name
    text: WaText | None = None
    image: WaMedia | None = None
    video: WaMedia | None = None
    audio: WaMedia | None = None
    document: WaMedia | None = None
    sticker: WaMedia | None = None
    location: WaLocation | None = None
    interactive: WaInteractive | None = None
    button: WaButton | None = None
    # Edits and deletions ("revoke"): https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/edit
    edit: WaEdit | None = None
    revoke: WaRevoke | None = None


class WaError(_Wa):
    # Bounded to 64 bits: a larger one is a 422 at the edge, not a 500 when it is journaled.
    code: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    title: Name | None = None
    message: Name | None = None


class WaStatus(_Wa):
    id: MessageId
    status: Name
    timestamp: UnixTime
    recipient_id: UserId | None = None
    errors: list[WaError] = Field(default_factory=list, max_length=20)


class WaMetadata(_Wa):
    phone_number_id: GraphId
    display_phone_number: Name = ""


class WaValue(_Wa):
    """``value`` of a ``messages`` change."""

    metadata: WaMetadata
    contacts: list[WaContact] = Field(default_factory=list, max_length=1000)
    messages: list[WaMessage] = Field(default_factory=list, max_length=1000)
    statuses: list[WaStatus] = Field(default_factory=list, max_length=1000)


class WaChange(_Wa):
    field: Name
    # Read as ``WaValue`` only for ``field == "messages"``: other fields have other shapes.
    value: Any = None


class WaEntry(_Wa):
    id: Name = ""
    changes: list[WaChange] = Field(default_factory=list, max_length=1000)


class WaWebhook(_Wa):
    object: Name
    entry: list[WaEntry] = Field(max_length=1000)


class WaMessageItem(_Wa):
    """One customer message, as journaled."""

    kind: Literal["message"] = "message"
    phone_number_id: GraphId
    display_phone_number: Name = ""
    contact: WaContact | None = None
    message: WaMessage


class WaStatusItem(_Wa):
    """One status of a message we sent, as journaled."""

    kind: Literal["status"] = "status"
    phone_number_id: GraphId
    status: WaStatus


WaItem = Annotated[WaMessageItem | WaStatusItem, Field(discriminator="kind")]


class WaMediaAnswer(_Wa):
    """``GET /{media id}``: where the file is, for a few minutes
    (https://developers.facebook.com/documentation/business-messaging/whatsapp/business-phone-numbers/media#retrieve-media-url)."""

    url: Annotated[str, Field(min_length=1, max_length=4000, pattern=r"^https?://")]
    mime_type: Name | None = None
