"""Separate the new text of a reply from the history it quotes (both are kept).

Cut at the first quote header ("On … wrote:", "Em … escreveu:", "Am … schrieb …:",
"-----Original Message-----", an Outlook "From: … Sent: …" block), or at a trailing run of
"> " lines; a signature after a "-- " line goes with the quoted part. A forwarded message is not
a quote: it stays in the visible text.
"""

from __future__ import annotations

import re

QUOTE_HEADERS = [
    re.compile(r"^\s*On\b.{0,300}\bwrote:\s*$", re.IGNORECASE | re.DOTALL),
    re.compile(r"^\s*Em\b.{0,300}\bescreveu:\s*$", re.IGNORECASE | re.DOTALL),
    re.compile(r"^\s*Am\b.{0,300}\bschrieb.{0,100}:\s*$", re.IGNORECASE | re.DOTALL),
    re.compile(r"^\s*Le\b.{0,300}\ba écrit\s*:\s*$", re.IGNORECASE | re.DOTALL),
    re.compile(r"^\s*-{2,}\s*Original Message\s*-{2,}\s*$", re.IGNORECASE),
    re.compile(r"^\s*-{2,}\s*Mensagem original\s*-{2,}\s*$", re.IGNORECASE),
]
OUTLOOK_FROM = re.compile(r"^\s*\*?(From|De|Von):\*?\s+\S", re.IGNORECASE)
OUTLOOK_SENT = re.compile(r"^\s*\*?(Sent|Enviado|Gesendet|Date|Data):\*?\s+\S", re.IGNORECASE)
UNDERSCORES = re.compile(r"^\s*_{10,}\s*$")
FORWARDED = re.compile(
    r"^\s*(-{3,}\s*(Forwarded message|Mensagem encaminhada|Weitergeleitete Nachricht)\s*-*"
    r"|Begin forwarded message:)\s*$",
    re.IGNORECASE,
)


def split_quoted(text: str) -> tuple[str, str]:
    """``(visible, quoted)``; ``visible + quoted`` loses nothing but the joining newline."""
    lines = text.replace("\r\n", "\n").split("\n")
    cut = _quote_start(lines)
    visible, quoted = lines[:cut], lines[cut:]
    if "-- " in visible:  # a signature: after the last "-- " line of the new text
        at = len(visible) - 1 - visible[::-1].index("-- ")
        visible, quoted = visible[:at], visible[at:] + quoted
    return "\n".join(visible).rstrip(), "\n".join(quoted).strip("\n")


def _quote_start(lines: list[str]) -> int:
    for i, line in enumerate(lines):
        if FORWARDED.match(line):
            return len(lines)  # what follows was forwarded on purpose: part of the new text
        two = line + " " + lines[i + 1] if i + 1 < len(lines) else line
        if any(p.match(line) for p in QUOTE_HEADERS):
            return i
        # "On <date>, <name>" wrapped onto a second line ending in "wrote:"
        wrapped = i + 1 < len(lines) and lines[i + 1].rstrip().endswith(":")
        if wrapped and line.strip() and any(p.match(two) for p in QUOTE_HEADERS[:4]):
            return i
        if UNDERSCORES.match(line) and i + 1 < len(lines) and OUTLOOK_FROM.match(lines[i + 1]):
            return i
        if OUTLOOK_FROM.match(line) and any(OUTLOOK_SENT.match(x) for x in lines[i + 1 : i + 4]):
            return i
    end = len(lines)
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    start = end
    while start > 0 and (lines[start - 1].startswith(">") or not lines[start - 1].strip()):
        start -= 1
    while start < end and not lines[start].strip():
        start += 1
    if start < end and any(x.startswith(">") for x in lines[start:end]):
        return start
    return len(lines)
