"""What the fuzz tests share (tests/test_fuzz_api.py, tests/test_fuzz_providers.py).

- **Reproducible**: one fixed seed, derandomized generation, no example database: CI runs the
  same examples every time, and a failure seen once is seen again.
- **Nothing in the repo**: Hypothesis keeps files of its own (a cache of the constants it reads
  from source modules, ``.hypothesis/constants``), by default in the working directory; they go
  under the test run's data directory instead, which is not the repo.
- **One shape for every error**: a 4xx or 5xx answer is JSON with ``error`` and ``message``
  (api/errors.py), whichever layer answered it.
- **Mail as senders write it, and as nobody should**: ``mails()`` builds plausible mails (any
  text, encoded words, charsets, transfer encodings, multiparts, attachments); ``malformed()``
  mangles them and the fixtures in tests/fixtures/email: truncated, garbage and NUL bytes, broken
  boundaries, odd charsets, huge or very many header lines (within the body limit), multiparts
  nested past what a recursive parser survives, other line endings.
"""

from __future__ import annotations

import base64
import json
import quopri
from collections.abc import Callable
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tests.conftest import DATA_DIR

SEED = 14

set_hypothesis_home_dir(DATA_DIR / "hypothesis")


def bounded(max_examples: int) -> settings:
    """Hypothesis settings for a fuzz test in CI: a fixed number of derandomized examples, no
    deadline (the machine is shared; no timing assertions), no example database."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        # Neither "shrink" nor "explain": a failure is reported as first found (derandomized, so
        # found again every run). Shrinking replays it hundreds of times, each a request and a
        # transaction; explaining traces every line. Either would put a failing run past CI's
        # time limit.
        phases=[Phase.explicit, Phase.generate],
        # The store is reached through fixtures set up once per test, not per example; examples
        # are large (mails) and slow (a request and a transaction each) on purpose.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def error_body_problem(status: int, content_type: str | None, body: bytes) -> str | None:
    """Why an answer breaks the error contract (None if it keeps it): no 5xx, and a 4xx is JSON
    with a non-empty ``error`` and ``message``."""
    if status >= 500:
        return f"{status}: the service failed: {body[:500]!r}"
    if status < 400:
        return None
    if (content_type or "").split(";")[0].strip() != "application/json":
        return f"{status} answered as {content_type!r}, not JSON: {body[:300]!r}"
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return f"{status} with a body that is not JSON: {body[:300]!r}"
    if not isinstance(parsed, dict):
        return f"{status} with a JSON body that is not an object: {body[:300]!r}"
    missing = [
        k for k in ("error", "message") if not (isinstance(parsed.get(k), str) and parsed[k])
    ]
    if missing:
        return f"{status} error body without {' and '.join(missing)}: {body[:300]!r}"
    return None


# ---- text as senders write it ------------------------------------------------------------------

# Any Unicode but lone surrogates (no UTF-8 text holds one): controls, NUL, RTL marks, emoji.
any_text = st.text
# Bytes known to trip decoders, mixed into random ones: NUL, BOMs, an overlong NUL, a UTF-8
# encoded surrogate, a UTF-7 sequence that decodes to a lone surrogate, a stray escape.
NASTY_BYTES = [
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"+2AA-",
    b"\x1b$B",
]
odd_bytes = st.lists(
    st.one_of(st.binary(max_size=16), st.sampled_from(NASTY_BYTES)), max_size=6
).map(b"".join)


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` most of the time, ``rare`` now and then (about one draw in ten)."""
    return st.integers(0, 9).flatmap(lambda i: rare if i == 0 else usual)


WORDS = st.sampled_from(["Olá", "pedido", "1001", "Re:", "ação", "注文", "😀", "", " ", "\t"])
# Charsets a mail may name, real and not: decoders that produce lone surrogates (UTF-7),
# stateful ones, multi-byte ones, unknown names, empty and broken parameters.
ODD_CHARSETS = [
    "utf-8",
    "us-ascii",
    "iso-8859-1",
    "windows-1252",
    "utf-7",
    "unicode-1-1-utf-7",
    "utf-16",
    "utf-32",
    "iso-2022-jp",
    "shift_jis",
    "gb18030",
    "big5",
    "koi8-r",
    "cp037",
    "x-unknown-charset",
    "",
    "utf-8\x00",
    '"',
    "../../etc/passwd",
]
charsets = st.sampled_from(ODD_CHARSETS)
# The ones whose decoders do odd things with bytes they were not made from: UTF-7 decodes to
# lone surrogates, UTF-16 to anything, ISO-2022-JP is stateful, cp037 is EBCDIC.
tricky_charsets = st.sampled_from(["utf-7", "utf-16", "iso-2022-jp", "cp037", "x-unknown-charset"])


def encoded(text: str, charset: str) -> bytes:
    """``text`` in ``charset`` if Python knows it and it holds the text, else in UTF-8 (what a
    sender's client does, labelling it wrongly or not)."""
    try:
        return text.encode(charset or "utf-8")
    except (LookupError, UnicodeError, ValueError):
        return text.encode("utf-8")


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    """An RFC 2047 word, well formed or not, in any of the charsets above."""
    charset = draw(charsets)
    raw = encoded(draw(any_text(max_size=30)), charset)
    if draw(st.booleans()):
        payload = base64.b64encode(raw).decode()
        kind = "B"
    else:
        payload = quopri.encodestring(raw, header=True).decode("ascii", "replace")
        kind = "Q"
    if draw(st.booleans()):
        payload = payload[: draw(st.integers(0, len(payload)))]  # cut short
    return f"=?{charset}?{kind}?{payload}?="


header_values = st.one_of(
    any_text(max_size=80),
    st.lists(st.one_of(WORDS, encoded_words()), max_size=5).map(" ".join),
)
domains = st.sampled_from(
    ["example.com", "mail.example.com", "exämple.com", "例え.jp", "xn--mnchen-3ya.de", "", "[::1]"]
)
local_parts = st.one_of(
    st.sampled_from(["maria", "joão", "support+c7", "a.b", '"quoted local"', ""]),
    any_text(max_size=20),
)
addresses = st.one_of(
    st.builds(lambda n, local, d: f"{n} <{local}@{d}>", header_values, local_parts, domains),
    st.builds(lambda local, d: f"{local}@{d}", local_parts, domains),
    any_text(max_size=40),
)
msg_ids = st.one_of(
    st.builds(lambda local, d: f"<{local}@{d}>", any_text(min_size=1, max_size=30), domains),
    st.sampled_from(["<CAF=order1001@mail.example.com>", "<out-1.7@acme.test>", "<>", "<<>>"]),
    any_text(max_size=30),
)
dates = st.one_of(
    st.datetimes(timezones=st.timezones()).map(format_datetime),
    st.sampled_from(["not a date at all", "Fri, 31 Dec 9999 23:59:59 +9999", "", "0"]),
    any_text(max_size=30),
)


def header_block(headers: list[tuple[str, str]]) -> bytes:
    """Header lines as a mail carries them: UTF-8 raw where the value is not ASCII (as many
    clients send it), one physical line each unless a value holds line breaks itself."""
    return b"".join(
        f"{name}: {value}\r\n".encode("utf-8", "surrogateescape") for name, value in headers
    )


@st.composite
def text_parts(draw: st.DrawFn, subtype: str = "plain") -> bytes:
    """One ``text/*`` part: headers and body in some charset and transfer encoding."""
    charset = draw(charsets)
    raw = encoded(draw(any_text(max_size=300)), charset)
    encoding = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64", "x-uuencode"]))
    if encoding == "base64":
        raw = base64.encodebytes(raw)
    elif encoding == "quoted-printable":
        raw = quopri.encodestring(raw)
    head = header_block(
        [
            ("Content-Type", f"text/{subtype}; charset={charset}"),
            ("Content-Transfer-Encoding", encoding),
        ]
    )
    return head + b"\r\n" + raw


@st.composite
def attachment_parts(draw: st.DrawFn) -> bytes:
    name = draw(st.one_of(any_text(max_size=30), encoded_words()))
    kind = draw(st.sampled_from(["application/pdf", "image/png", "message/rfc822", "text/x-odd"]))
    data = draw(st.binary(max_size=300))
    head = header_block(
        [
            ("Content-Type", f'{kind}; name="{name}"'),
            ("Content-Disposition", f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"),
            ("Content-Transfer-Encoding", "base64"),
        ]
    )
    return head + b"\r\n" + base64.encodebytes(data)


def multipart(subtype: str, parts: list[bytes], boundary: str) -> bytes:
    body = b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts)
    head = header_block([("Content-Type", f'multipart/{subtype}; boundary="{boundary}"')])
    return head + b"\r\n" + body + f"--{boundary}--\r\n".encode()


@st.composite
def mails(draw: st.DrawFn) -> bytes:
    """A whole mail as a sender's client might write it; anything in its fields."""
    headers = [
        ("From", draw(addresses)),
        ("To", draw(addresses)),
        ("Subject", draw(header_values)),
        ("Date", draw(dates)),
    ]
    if draw(st.booleans()):
        headers.append(("Message-ID", draw(msg_ids)))
    if draw(st.booleans()):
        headers.append(("In-Reply-To", draw(msg_ids)))
        headers.append(("References", " ".join(draw(st.lists(msg_ids, max_size=4)))))
    if draw(st.booleans()):
        headers.append(
            (draw(st.sampled_from(["Auto-Submitted", "Precedence", "Cc", "Reply-To"])), "auto")
        )
    headers.append(("MIME-Version", "1.0"))
    shape = draw(st.sampled_from(["plain", "html", "alternative", "mixed"]))
    if shape in ("plain", "html"):
        body = draw(text_parts(shape))
    else:
        parts = [draw(text_parts("plain")), draw(text_parts("html"))]
        if shape == "mixed":
            parts += draw(st.lists(attachment_parts(), max_size=3))
        body = multipart(shape, parts, draw(st.sampled_from(["b1", "=_Part_0", "x" * 70])))
    return header_block(headers) + body


FIXTURE_MAILS = [
    p.read_bytes() for p in sorted((Path(__file__).parent / "fixtures" / "email").glob("*.eml"))
]


# ---- mangled mail ------------------------------------------------------------------------------

Mutation = Callable[[st.DrawFn, bytes], bytes]


def _at(draw: st.DrawFn, raw: bytes) -> int:
    return draw(st.integers(0, len(raw)))


def truncated(draw: st.DrawFn, raw: bytes) -> bytes:
    return raw[: _at(draw, raw)]


def garbage(draw: st.DrawFn, raw: bytes) -> bytes:
    at = _at(draw, raw)
    return raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:]


def nul_bytes(draw: st.DrawFn, raw: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 4))):
        at = _at(draw, raw)
        raw = raw[:at] + b"\x00" + raw[at:]
    return raw


def broken_boundaries(draw: st.DrawFn, raw: bytes) -> bytes:
    """Delimiters that do not match the declared boundary, a missing close delimiter, an empty or
    absent boundary parameter, a delimiter inside a header block."""
    how = draw(st.sampled_from(["rename", "unclosed", "empty", "dropped", "in-headers"]))
    if how == "rename":
        return raw.replace(b"boundary=", b"boundary=zz", 1)
    if how == "unclosed":
        end = raw.rfind(b"--\r\n")
        return raw[:end] if end > 0 else raw + b"\r\n--never-closed\r\n"
    if how == "empty":
        return raw.replace(b"boundary=", b'boundary="" old=', 1)
    if how == "dropped":
        return raw.replace(b"boundary=", b"x-was-boundary=", 1)
    head_end = raw.find(b"\r\n\r\n")
    at = head_end if head_end > 0 else len(raw)
    return raw[:at] + b"\r\n--b1\r\nContent-Type: text/plain" + raw[at:]


def odd_charsets(draw: st.DrawFn, raw: bytes) -> bytes:
    odd = draw(charsets).encode("utf-8")
    if b"charset=" in raw:
        return raw.replace(b"charset=", b"charset=" + odd + b" was=", 1)
    return b"Content-Type: text/plain; charset=" + odd + b"\r\n" + raw


def huge_header_line(draw: st.DrawFn, raw: bytes) -> bytes:
    value = b"a" * draw(st.integers(1_000, 300_000))
    return b"X-Huge: " + value + b"\r\n" + raw


def many_header_lines(draw: st.DrawFn, raw: bytes) -> bytes:
    count = draw(st.integers(100, 4_000))  # within INBOXSYNC_MAX_HEADER_LINES (5000)
    return b"".join(b"X-Line-%d: v\r\n" % i for i in range(count)) + raw


# Past about 1,000 levels any depth is the same case for a recursive parser: 1,100 is the one.
DEPTHS = st.sampled_from([2, 50, 400, 1_100])


def nested(depth: int, leaf: bytes) -> tuple[str, bytes]:
    """The content type and body of a multipart nested ``depth`` levels deep around a text/plain
    ``leaf``: past about 1,000 levels a recursive MIME parser runs out of stack."""
    content_type, body = "text/plain", leaf
    for level in range(depth):
        entity = f"Content-Type: {content_type}\r\n\r\n".encode() + body
        boundary = f"n{level}"
        body = f"--{boundary}\r\n".encode() + entity + f"\r\n--{boundary}--\r\n".encode()
        content_type = f'multipart/mixed; boundary="{boundary}"'
    return content_type, body


def deeply_nested(draw: st.DrawFn, raw: bytes) -> bytes:
    """The mail's body inside many levels of multipart (its first Content-Type is the one read)."""
    head_end = raw.find(b"\r\n\r\n")
    head, body = (raw[:head_end], raw[head_end + 4 :]) if head_end >= 0 else (raw, b"")
    content_type, inner = nested(draw(DEPTHS), body)
    return f"Content-Type: {content_type}\r\n".encode() + head + b"\r\n\r\n" + inner


def line_endings(draw: st.DrawFn, raw: bytes) -> bytes:
    return raw.replace(b"\r\n", draw(st.sampled_from([b"\n", b"\r", b"\n\r", b"\r\r\n"])))


MUTATIONS: list[Mutation] = [
    truncated,
    garbage,
    nul_bytes,
    broken_boundaries,
    odd_charsets,
    huge_header_line,
    many_header_lines,
    deeply_nested,
    line_endings,
]


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    """A fixture mail or a generated one, mangled one to three times."""
    raw = draw(st.one_of(st.sampled_from(FIXTURE_MAILS), mails()))
    for mutate in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        raw = mutate(draw, raw)
    return raw


raw_mails = st.one_of(st.sampled_from(FIXTURE_MAILS), mails(), malformed())


# ---- forms -------------------------------------------------------------------------------------


def form(parts: list[tuple[str, bytes, dict[str, str]]], boundary: str) -> bytes:
    """A ``multipart/form-data`` body: each part a name, its bytes, and its other headers (a
    ``filename`` makes it a file)."""
    out = []
    for name, value, extra in parts:
        disposition = f'form-data; name="{name}"'
        if "filename" in extra:
            disposition += f'; filename="{extra["filename"]}"'
        head = [("Content-Disposition", disposition)]
        head += [(k, v) for k, v in extra.items() if k != "filename"]
        out.append(f"--{boundary}\r\n".encode() + header_block(head) + b"\r\n" + value + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


@st.composite
def form_files(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """An attachment as a form file part: any name, any bytes, any type: a forwarded mail
    (``message/rfc822``), a multipart now and then nested deep, text in a charset."""
    name = draw(any_text(min_size=1, max_size=20).filter(lambda s: not set('"\r\n') & set(s)))
    shape = draw(st.sampled_from(["binary", "binary", "mail", "nested"]))
    if shape == "nested":
        kind, body = nested(draw(DEPTHS), b"hello")
    elif shape == "mail":
        kind, body = "message/rfc822", draw(st.sampled_from(FIXTURE_MAILS))
    else:
        kind = draw(st.sampled_from(["image/png", "application/pdf", "text/plain; charset=utf-7"]))
        body = draw(st.binary(max_size=200))
    return ("attachment-1", body, {"filename": name, "Content-Type": kind})
