"""Amazon SNS messages and the SES notification one carries (handlers/channels/ses.py).

SNS: https://docs.aws.amazon.com/sns/latest/dg/http-notification-json.html
SES: https://docs.aws.amazon.com/ses/latest/dg/receiving-email-notifications-contents.html

Both are read with pydantic's JSON parser, which refuses nesting deeper than 200 levels while it
parses; every field inboxsync reads is declared with its JSON type, so a number where SNS sends
a string, or a list where it sends an object, is a 422 naming the field, before the signature
is checked. Only what inboxsync reads is declared; other fields are accepted and ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SnsType = Literal["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]


class _Sns(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class SnsAttribute(_Sns):
    type: str = Field(alias="Type")
    value: str = Field(alias="Value")


class SnsMessage(_Sns):
    """What SNS posts; the field names are SNS's (they are what its signature covers)."""

    type: SnsType = Field(alias="Type")
    message_id: str = Field(alias="MessageId", min_length=1, max_length=200)
    topic_arn: str = Field(alias="TopicArn", max_length=1024)
    message: str = Field(alias="Message")
    timestamp: str = Field(alias="Timestamp", max_length=64)
    signature_version: str = Field(alias="SignatureVersion", max_length=8)
    signature: str = Field(alias="Signature", max_length=4096)
    signing_cert_url: str = Field(alias="SigningCertURL", max_length=2048)
    subject: str | None = Field(default=None, alias="Subject")
    token: str | None = Field(default=None, alias="Token", max_length=4096)
    subscribe_url: str | None = Field(default=None, alias="SubscribeURL", max_length=2048)
    unsubscribe_url: str | None = Field(default=None, alias="UnsubscribeURL", max_length=2048)
    message_attributes: dict[str, SnsAttribute] = Field(
        default_factory=dict, alias="MessageAttributes"
    )

    def signed_fields(self) -> dict[str, str]:
        """The message as SNS wrote it, field name to text: what ``string_to_sign`` reads."""
        return {
            name: value
            for name, value in self.model_dump(by_alias=True, exclude_none=True).items()
            if isinstance(value, str)
        }


class SesAction(_Sns):
    # The SNS action's encoding of ``content``.
    encoding: Literal["UTF8", "BASE64"] = "UTF8"


class SesReceipt(_Sns):
    action: SesAction = Field(default_factory=SesAction)


class SesMail(_Sns):
    message_id: str | None = Field(default=None, alias="messageId", max_length=500)


class SesNotification(_Sns):
    """SES's JSON in a Notification's ``Message``; ``content`` is the raw mail (SNS action)."""

    notification_type: str = Field(alias="notificationType", max_length=64)
    content: str | None = None
    mail: SesMail = Field(default_factory=SesMail)
    receipt: SesReceipt = Field(default_factory=SesReceipt)
