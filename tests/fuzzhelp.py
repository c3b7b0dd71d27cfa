"""What the fuzz tests share (tests/test_fuzz_api.py, tests/test_fuzz_providers.py,
tests/test_fuzz_chat.py).

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
- **JSON as nobody should write it**: ``mutated_json()`` changes a provider's valid document
  where Hypothesis chooses: wrong types, keys dropped or added, integers past 64 bits, NUL and
  lone surrogates, very long or non-ASCII ids, odd times, empty or duplicated lists, nesting
  past what a recursive parser survives.
- **The path after the edge**: ``process_and_check()`` runs what a post journaled through the
  worker's batch and checks that each delivery ended stored, duplicate or dead with its reason
  and dead letter, and that nothing is half-written.
"""

from __future__ import annotations

import base64
import copy
import json
import quopri
import re
from collections.abc import Callable, Mapping
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.control import currently_in_test_context
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from handlers import journal, pipeline
from store.db import reading, transaction
from store.models import Conversation, DeadLetter, Delivery, DeliveryOutcome, Message, Thread
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


# ---- JSON as a hostile sender writes it --------------------------------------------------------
# A valid document (a provider's fixture) changed one to three times where Hypothesis chooses:
# every node can be the one changed, and every change is one a parser or a store trips on.

Path_ = tuple[str | int, ...]
# Stands for a nesting too deep to build as Python objects (json.dumps would recurse): replaced,
# once dumped, by the text of ``DEPTHS`` levels of arrays or objects.
_DEEP = "\x00fuzz-deep\x00"
_DEEP_DUMPED = json.dumps(_DEEP)
HUGE_INTS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63) - 1, -(2**64), 10**40]
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",  # lone surrogates: JSON escapes them, UTF-8 has no bytes for them
    "x\udfffy",
    "\udbff\udc00\ud800",
    "Ünïcødé😀",
    "١٢٣",  # digits to str.isdigit(), not to int() everywhere
    "²",
    "\u202etxt.exe",
    "C0\u0301",
    "../../etc/passwd",
    "%00",
    "\r\nX-Injected: 1",
    "0x10",
    "1e999",
    "NaN",
    "-1",
    "1.5",
]
ODD_TIMES: list[Any] = [
    "0001-01-01T00:00:00+01:00",  # valid, and before year 1 in UTC
    "9999-12-31T23:59:59-23:59",  # after 9999 in UTC
    -1,
    -(10**10),
    0,
    1.5,
    -0.5,
    1e300,
    253_402_300_800,  # a second past 9999-12-31
    10**12,
    "1.5",
    "-1",
    "1700000000.",
    ".5",
    "1e9",
    "99999999999999999999.000001",
    "1700000000.0000001",
    "2026-11-25T10:00:00",  # no offset
    "2026-02-30T10:00:00Z",
    float("inf"),
    float("nan"),
]


# The keys of a time, whatever the provider calls it: ts, timestamp, date, sent_at, event_time.
_TIME_KEY = re.compile(r"(^|_)(ts|timestamp|date|time|at)$")


def json_paths(doc: Any, here: Path_ = ()) -> list[Path_]:
    """Every node of a JSON document (its root too), as the keys that reach it."""
    out = [here]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += json_paths(value, (*here, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += json_paths(value, (*here, i))
    return out


def _get(doc: Any, path: Path_) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _set(doc: Any, path: Path_, value: Any) -> Any:
    """``doc`` with the node at ``path`` replaced (the root, if ``path`` is empty)."""
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(ODD_STRINGS),
    any_text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(any_text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _wrong_type(draw: st.DrawFn, value: Any) -> Any:
    return draw(
        st.sampled_from([None, True, False, 0, -1, 1.5, "", "x", [], {}, [value], {"v": value}])
    )


def _huge_int(draw: st.DrawFn, value: Any) -> Any:
    number = draw(st.sampled_from(HUGE_INTS))
    return str(number) if isinstance(value, str) and draw(st.booleans()) else number


def _nul(draw: st.DrawFn, value: Any) -> Any:
    text = value if isinstance(value, str) else str(value)
    at = draw(st.integers(0, len(text)))
    return text[:at] + "\x00" + text[at:]


def _surrogate(draw: st.DrawFn, value: Any) -> Any:
    text = value if isinstance(value, str) else str(value)
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(["\ud800", "\udfff", "\udbff"])) + text[at:]


def _long(draw: st.DrawFn, value: Any) -> Any:
    unit = draw(st.sampled_from(["x", "é", "😀", "\x00", "<@U1>"]))
    return unit * draw(st.sampled_from([501, 5_000, 100_001, 1_000_001]))


def _unicode_id(draw: st.DrawFn, value: Any) -> Any:
    text = value if isinstance(value, str) else str(value)
    return draw(st.sampled_from(["", text + "é", "Ü" + text, text + "😀", "١٢٣", "²"]))


def _odd_time(draw: st.DrawFn, value: Any) -> Any:
    return draw(st.sampled_from(ODD_TIMES))


def _emptied(draw: st.DrawFn, value: Any) -> Any:
    return draw(st.sampled_from([[], {}, ""])) if not isinstance(value, list) else []


def _duplicated(draw: st.DrawFn, value: Any) -> Any:
    if isinstance(value, list) and value:
        return value + value[: draw(st.integers(1, len(value)))]
    return [value, value]


def _deep(draw: st.DrawFn, value: Any) -> Any:
    return _DEEP


def _any_value(draw: st.DrawFn, value: Any) -> Any:
    return draw(json_values)


def _hostile_value(draw: st.DrawFn, value: Any) -> Any:
    """A value of the same JSON type, or near it, that a store or a parser trips on: the change
    most likely to pass a schema and reach the worker."""
    if isinstance(value, str):
        options = [_nul, _surrogate, _unicode_id, _long, _huge_int]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        options = [_huge_int, _odd_time, _wrong_type]
    else:
        options = [_wrong_type, _any_value]
    return draw(st.sampled_from(options))(draw, value)


JsonMutation = Callable[[st.DrawFn, Any], Any]
JSON_MUTATIONS: list[JsonMutation] = [
    _nul,
    _huge_int,
    _surrogate,
    _wrong_type,
    _long,
    _unicode_id,
    _odd_time,
    _emptied,
    _duplicated,
    _deep,
    _any_value,
]


def _structural(draw: st.DrawFn, doc: Any) -> Any:
    """A key dropped or added somewhere, or a list item dropped."""
    containers = [p for p in json_paths(doc) if isinstance(_get(doc, p), dict | list)]
    if not containers:
        return doc
    node = _get(doc, draw(st.sampled_from(containers)))
    if isinstance(node, dict) and node and draw(st.booleans()):
        del node[draw(st.sampled_from(sorted(node)))]
    elif isinstance(node, dict):
        names = st.sampled_from(["type", "__proto__", "", "id"])
        key = draw(st.one_of(names, any_text(max_size=8)))
        node[key] = draw(json_values)
    elif node:
        del node[draw(st.integers(0, len(node) - 1))]
    return doc


def dumped(doc: Any, draw: st.DrawFn) -> bytes:
    """``doc`` as JSON bytes: ASCII with escapes, or UTF-8 (lone surrogates written as the bytes
    a careless encoder writes); a ``_DEEP`` node as arrays or objects nested deep."""
    if draw(st.booleans()):
        text = json.dumps(doc)
    else:
        text = json.dumps(doc, ensure_ascii=False).replace(_DEEP, "\\u0000fuzz-deep\\u0000")
    if _DEEP_DUMPED in text:
        depth = draw(st.sampled_from([50, 1_100, 100_000]))
        if draw(st.booleans()):
            deep = "[" * depth + "]" * depth
        else:
            deep = '{"a":' * depth + "1" + "}" * depth
        text = text.replace(_DEEP_DUMPED, deep)
    return text.encode("utf-8", "surrogatepass")


def _now_and_then(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in ``one_in`` draws (generation favours the first of a sample)."""
    return st.sampled_from([False] * (one_in - 1) + [True])


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any) -> bytes:
    """``doc`` (not changed: a copy is) changed once or twice (a value, a time, any node, its
    structure), as JSON bytes; now and then cut short."""
    doc = copy.deepcopy(doc)
    for _ in range(2 if draw(_now_and_then(4)) else 1):
        where = draw(st.sampled_from(["a value", "a time", "any node", "a value", "structure"]))
        if where == "structure":
            doc = _structural(draw, doc)
            continue
        paths = json_paths(doc)
        values = [p for p in paths if not isinstance(_get(doc, p), dict | list)]
        times = [p for p in values if p and isinstance(p[-1], str) and _TIME_KEY.search(p[-1])]
        mutate = draw(st.sampled_from(JSON_MUTATIONS))
        if where == "a time" and times:
            paths, mutate = times, _odd_time
        elif where == "a value" and values:
            paths, mutate = values, _hostile_value
        path = draw(st.sampled_from(paths))
        doc = _set(doc, path, mutate(draw, _get(doc, path)))
    body = dumped(doc, draw)
    if draw(_now_and_then(15)):
        body = body[: draw(st.integers(0, len(body)))]
    return body


# ---- the path: edge, journal, worker -----------------------------------------------------------


def tally(what: str) -> None:
    """Count it for ``pytest --hypothesis-show-statistics``: what the fuzzing reached."""
    if currently_in_test_context():
        event(what)


def journal_ids() -> set[int]:
    with reading() as session:
        return set(session.scalars(select(Delivery.id)))


def clear_journal() -> None:
    """What a failed example left journaled, so that the next one starts from an empty journal
    (Hypothesis goes on after a failure to report it)."""
    with transaction() as session:
        session.execute(delete(Delivery))


Sent = TypeVar("Sent")
CheckDead = Callable[[Session, DeliveryOutcome, tuple[int, Any]], None]


def process_and_check(
    sent: Mapping[int, Sent],
    check_dead: CheckDead,
    check_stored: Callable[[Session, DeliveryOutcome, Sent], None],
) -> None:
    """Process the journaled deliveries (``sent``: each with what made it) as a worker does, in
    one batch: it must not raise. Then each has its outcome (``check_dead`` or ``check_stored``
    says what more it needs), the journal is empty, and nothing is half-written."""
    if not sent:
        return
    ids = sorted(sent)
    with reading() as session:
        rows = select(Delivery.id, Delivery.inbox_id, Delivery.payload).where(Delivery.id.in_(ids))
        journaled_as = {r.id: (r.inbox_id, r.payload) for r in session.execute(rows)}
    assert sorted(journaled_as) == ids and journal_ids() == set(ids), "journaled more or less"

    counts = pipeline.process_deliveries(ids, task_id=None)

    assert counts["gone"] == 0 and not journal_ids(), counts
    with reading() as session:
        outcomes = session.scalars(select(DeliveryOutcome).where(DeliveryOutcome.id.in_(ids)))
        found = {o.id: o for o in outcomes}
        assert sorted(found) == ids, "a delivery without an outcome"
        for delivery_id, outcome in found.items():
            tally(f"worker: {outcome.state} {(outcome.error or '')[:60]}")
            if outcome.state == "dead":
                check_dead_letter(session, outcome, journaled_as[delivery_id])
                check_dead(session, outcome, journaled_as[delivery_id])
            else:
                check_messages(session, outcome)
                check_stored(session, outcome, sent[delivery_id])
        check_nothing_half_written(session)


def check_dead_letter(
    session: Session, outcome: DeliveryOutcome, journaled_as: tuple[int, Any]
) -> None:
    """A dead delivery says why, and its dead letter keeps what was journaled."""
    assert outcome.error and outcome.messages == [], outcome.error
    letters = session.scalars(
        select(DeadLetter.payload).where(DeadLetter.task == pipeline.INGEST_TASK)
    )
    kept = [journal.unwrapped(p) for p in letters]
    assert journaled_as in [(d.get("inbox_id"), d.get("payload")) for d in kept], (
        f"delivery {outcome.id} is dead without its dead letter"
    )


def check_messages(session: Session, outcome: DeliveryOutcome) -> None:
    """A stored (or duplicate) delivery's messages are there, each in its conversation; an edit
    of a message not stored yet (it waits for it) names none."""
    assert outcome.state in ("stored", "duplicate"), outcome.state
    for stored in outcome.messages:
        if stored["message_id"] is None:
            continue
        message = session.get(Message, stored["message_id"])
        assert message is not None, f"delivery {outcome.id}: its message is not there"
        assert session.get(Conversation, message.conversation_id) is not None
        assert session.get(Conversation, stored["conversation_id"]) is not None


def check_nothing_half_written(session: Session) -> None:
    orphans = session.scalar(
        select(func.count())
        .select_from(Message)
        .outerjoin(Conversation, Conversation.id == Message.conversation_id)
        .where(Conversation.id.is_(None))
    )
    assert orphans == 0, "a message without its conversation"
    loose = session.scalar(
        select(func.count()).select_from(Thread).where(Thread.conversation_id.is_(None))
    )
    assert loose == 0, "a thread id without a conversation"


def new_inbox(account: int, provider: str, channel: str, secrets: dict[str, Any]) -> int:
    """A new inbox of ``provider``'s for one example: what an example stored is no duplicate
    of another's."""
    from store.db import transaction
    from store.models import Inbox

    with transaction() as session:
        row = Inbox(
            account_id=account, name=provider, channel=channel, provider=provider, secrets=secrets
        )
        session.add(row)
        session.flush()
        return row.id
