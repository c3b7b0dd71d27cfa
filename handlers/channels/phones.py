"""Phone numbers as contacts are keyed by: E.164 (``+351910000000``), with ``phonenumbers``.

Twilio writes numbers in E.164 already (``+14155550100``, ``whatsapp:+14155550100``); WhatsApp
Cloud gives a ``wa_id``, the same digits without the ``+``. Both go through ``e164`` so that one
person writing by SMS and by WhatsApp is one contact whichever provider carried the message.
"""

from __future__ import annotations

import phonenumbers


def e164(raw: str) -> str:
    """``raw`` (an international number, with or without its ``+``, spaces or dashes) in E.164;
    ``ValueError`` if it is not one (a short code such as ``32665``, an alphanumeric sender id).

    Possible, not valid: ``phonenumbers`` knows which ranges are assigned today, and a number
    assigned tomorrow (or a fictional 555 number in a test) must not stop a message."""
    text = raw.strip()
    if not text or len(text) > 40:
        raise ValueError("not a phone number")
    if not text.startswith("+"):
        text = "+" + text  # a wa_id: the country code and number, digits only
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise ValueError("not a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError("not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
