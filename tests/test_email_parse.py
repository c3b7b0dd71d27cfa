"""The email parser (handlers/email/parse.py) on realistic mails: tests/fixtures/email/*.eml."""

from __future__ import annotations

import hashlib
import random
from email import message_from_bytes
from pathlib import Path

import pytest

from handlers.email.parse import UnparseableEmail, from_parts, parse_raw
from schemas.email import ParsedEmail

FIXTURES = Path(__file__).parent / "fixtures" / "email"


def parse(name: str) -> ParsedEmail:
    return parse_raw((FIXTURES / name).read_bytes())[0]


def test_utf8_mail_with_8bit_headers():
    mail = parse("plain_utf8.eml")
    assert mail.subject == "Pedido 1001 não chegou"
    assert mail.from_ is not None and mail.from_.name == "Maria Souza"
    assert mail.from_.email == "maria@example.com"
    assert mail.message_id == "CAF=order1001@mail.example.com"
    assert mail.date is not None and mail.date.isoformat() == "2026-11-24T09:11:58-03:00"
    assert mail.text.startswith("Olá, o meu pedido 1001") and "\r" not in mail.text
    assert mail.problems == []


@pytest.mark.parametrize(
    ("name", "subject", "sender", "snippet"),
    [
        ("latin1_qp.eml", "Fatura em atraso – ação necessária", "José Gonçalves", "cartão expirou"),
        ("windows1252.eml", "Windows quotes", "Pierre", "“delivered” – but nothing arrived…"),
        ("iso2022jp.eml", "ご注文について", "山田太郎", "お世話になっております"),
        ("encoded_words.eml", "Reclamação sobre o pedido nº 1002", "João Silva", "Conteúdo"),
    ],
)
def test_charsets_and_encoded_words_are_decoded(name, subject, sender, snippet):
    mail = parse(name)
    assert mail.subject == subject
    assert mail.from_ is not None and mail.from_.name == sender
    assert snippet in mail.text


def test_display_names_with_commas_and_encoded_recipients():
    assert parse("outlook_reply.eml").from_.name == "Lee, Sam"  # type: ignore[union-attr]
    [to] = parse("encoded_words.eml").to
    assert (to.name, to.email) == ("Suporte Técnico", "support@acme.test")


def test_idna_domains_are_decoded():
    mail = parse("idna_sender.eml")
    assert mail.from_ is not None and mail.from_.email == "info@müller.example"
    assert mail.from_.name == "Müller"


def test_html_is_kept_and_sanitized_for_display():
    mail = parse("html_alternative.eml")
    assert mail.text == "The checkout page shows an error."
    assert mail.html is not None and "<script>" in mail.html
    assert mail.html_safe is not None
    assert "<script" not in mail.html_safe and "onclick" not in mail.html_safe
    assert "<b>checkout</b>" in mail.html_safe


def test_attachments_have_names_sizes_and_hashes_and_inline_images_keep_their_cid():
    mail, contents = parse_raw((FIXTURES / "attachments.eml").read_bytes())
    assert [(a.filename, a.content_type, a.inline) for a in mail.attachments] == [
        ("photo.png", "image/png", True),
        ("fatura nº 42.pdf", "application/pdf", False),
    ]
    photo, pdf = mail.attachments
    assert photo.content_id == "photo1@example.com"
    assert contents[1].startswith(b"%PDF-1.4") and pdf.size == len(contents[1])
    assert pdf.sha256 == hashlib.sha256(contents[1]).hexdigest()
    assert mail.html_safe is not None and 'src="cid:photo1@example.com"' in mail.html_safe
    assert mail.text == "See the photo:"  # the HTML rendered as text: the mail has no text part


def test_oversized_attachments_are_described_but_not_kept():
    mail, contents = parse_raw((FIXTURES / "attachments.eml").read_bytes(), max_attachment_bytes=50)
    assert [a.size for a in mail.attachments] == [66, 45]
    assert contents == [b"", contents[1]] and contents[1]
    assert any("photo.png" in p for p in mail.problems)


def test_reply_ids_quotes_and_signature():
    mail = parse("gmail_reply.eml")
    assert mail.in_reply_to == ["out-1.7@acme.test"]
    assert mail.references == ["CAF=order1001@mail.example.com", "out-1.7@acme.test"]
    assert mail.visible_text == "Chegou hoje, obrigada!"
    assert mail.quoted_text.startswith("-- \nMaria Souza")
    assert "> Olá Maria, o pedido saiu ontem." in mail.quoted_text


def test_references_only_reply():
    mail = parse("references_only.eml")
    assert mail.in_reply_to == []
    assert mail.references == ["CAF=order1001@mail.example.com", "CAF=reply2@mail.example.com"]


def test_outlook_reply_header_block_is_a_quote():
    mail = parse("outlook_reply.eml")
    assert mail.visible_text == "Thanks, that works for us."
    assert "Your contract renews on December 1st." in mail.quoted_text


def test_a_forwarded_message_is_not_a_quote():
    mail = parse("forwarded.eml")
    assert "Tracking number: XY123" in mail.visible_text
    assert mail.quoted_text == ""


def test_auto_replies_and_bounces_are_recognized():
    ooo = parse("auto_reply.eml")
    assert ooo.auto_submitted and not ooo.bounce
    bounce = parse("bounce.eml")
    assert bounce.bounce
    assert [a.content_type for a in bounce.attachments] == [
        "message/delivery-status",
        "message/rfc822",
    ]
    for ordinary in ("plain_utf8.eml", "gmail_reply.eml", "forwarded.eml"):
        mail = parse(ordinary)
        assert not mail.auto_submitted and not mail.bounce


def test_malformed_mail_is_parsed_leniently_and_says_what_was_wrong():
    mail = parse("malformed.eml")
    assert mail.subject == "weird mail"
    assert mail.message_id is None and mail.date is None
    assert "SGVsbG8gd29y" in mail.text  # the body is kept, as text
    assert "no Message-ID" in mail.problems
    assert any("Date" in p for p in mail.problems)
    assert any("StartBoundaryNotFound" in p for p in mail.problems)


def test_nothing_usable_is_unparseable():
    for raw in (b"", b"   \r\n", b"just some words without any header line"):
        with pytest.raises(UnparseableEmail):
            parse_raw(raw)


@pytest.mark.parametrize("name", ["gmail_reply.eml", "html_alternative.eml", "encoded_words.eml"])
def test_from_parts_gives_what_parse_raw_gives(name):
    raw = (FIXTURES / name).read_bytes()
    whole, _ = parse_raw(raw)
    message = message_from_bytes(raw)
    text = html = None
    for part in message.walk():
        body = part.get_payload(decode=True)
        if isinstance(body, bytes):
            decoded = body.decode(part.get_content_charset() or "utf-8")
            if part.get_content_type() == "text/plain":
                text = decoded
            elif part.get_content_type() == "text/html":
                html = decoded
    # As a provider hands them over: unfolded, Unicode (8-bit header bytes read as UTF-8).
    headers = [
        (n, v.encode("utf-8", "surrogateescape").decode("utf-8")) for n, v in message.raw_items()
    ]
    split, _ = from_parts(headers=headers, text=text, html=html)
    assert split == whole


def test_no_mutation_of_a_mail_crashes_the_parser():
    rng = random.Random(2026)
    corpus = [p.read_bytes() for p in sorted(FIXTURES.glob("*.eml"))]
    for _ in range(300):
        raw = bytearray(rng.choice(corpus))
        kind = rng.randrange(3)
        if kind == 0:
            raw = raw[: rng.randrange(len(raw) + 1)]
        elif kind == 1:
            for _ in range(rng.randrange(1, 20)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        else:
            head_end = raw.find(b"\r\n\r\n")
            raw = raw[:head_end] + b"\r\n" + raw[:head_end] + raw[head_end:]
        try:
            parsed, contents = parse_raw(bytes(raw))
        except UnparseableEmail:
            continue
        assert isinstance(parsed, ParsedEmail)
        assert len(contents) == len(parsed.attachments)
