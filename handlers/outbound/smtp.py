"""SMTP submission, for any relay or mail server (RFC 5321/6409).

Only one moment is ambiguous: after the mail's body went out and before the server's final
answer. A timeout or a dropped connection there is ``uncertain``; everything before it (no
connection, a refused sender or recipient, a 4xx) is certain. SMTP has no way to ask whether a
mail arrived, so ``find`` is unsupported. The connection goes only to an address
handlers/netguard.py checked (handlers/outbound/transport.py); a refused host fails the reply.
"""

from __future__ import annotations

import smtplib
import ssl

from handlers import netguard
from handlers.outbound import transport
from handlers.outbound.base import LookupUnsupported, Outcome, SendFailed
from handlers.outbound.compose import ascii_email, to_mime
from schemas.outbound import OutboundMail, SmtpOutbound


class SmtpSender:
    via = "smtp"

    def send(self, mail: OutboundMail, config: SmtpOutbound) -> str:
        recipients = [ascii_email(a) for a in [*mail.to, *mail.cc]]
        content = to_mime(mail).as_bytes()
        try:
            client = _connect(config)
        except netguard.TargetRefused as exc:
            raise SendFailed(f"smtp: refused target: {exc}", outcome="permanent") from None
        except netguard.Unresolvable as exc:
            raise SendFailed(f"smtp: {exc}", outcome="retry") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise SendFailed(f"smtp: cannot connect: {exc}", outcome="retry") from None
        try:
            _envelope(client, config, ascii_email(mail.from_), recipients)
            try:
                code, answer = client.data(content)
            except smtplib.SMTPResponseException as exc:
                raise _answered(exc.smtp_code, exc.smtp_error) from None
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                raise SendFailed(
                    f"smtp: no answer after the mail was sent: {exc}", outcome="uncertain"
                ) from None
            if code != 250:  # smtplib raises only for the answer to DATA, not to the mail
                raise _answered(code, answer)
            return answer.decode(errors="replace")[:300] or mail.message_id
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()

    def find(self, mail: OutboundMail, config: SmtpOutbound) -> str | None:
        raise LookupUnsupported("SMTP cannot be asked whether a mail arrived")


def _connect(config: SmtpOutbound) -> smtplib.SMTP:
    client = transport.smtp_client(
        config.host,
        config.port,
        timeout_s=config.timeout_s,
        implicit_tls=config.security == "tls",
        context=ssl.create_default_context(),
    )
    if config.security == "tls":
        return client
    try:
        client.ehlo()
        if config.security == "starttls":
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
    except BaseException:
        client.close()  # a refused certificate must not leave the socket behind
        raise
    return client


def _envelope(client: smtplib.SMTP, config: SmtpOutbound, sender: str, to: list[str]) -> None:
    """Log in, MAIL FROM, RCPT TO each: anything refused here means nothing was sent."""
    try:
        if config.username:
            client.login(config.username, config.password or "")
        code, answer = client.mail(sender)
        if code != 250:
            raise _answered(code, answer)
        for rcpt in to:
            code, answer = client.rcpt(rcpt)
            if code not in (250, 251):
                raise _answered(code, answer, f"recipient {rcpt}: ")
    except smtplib.SMTPResponseException as exc:
        raise _answered(exc.smtp_code, exc.smtp_error) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise SendFailed(f"smtp: before the mail was sent: {exc}", outcome="retry") from None


def _answered(code: int, answer: bytes | str, prefix: str = "") -> SendFailed:
    text = answer.decode(errors="replace") if isinstance(answer, bytes) else answer
    outcome: Outcome = "retry" if 400 <= code < 500 else "permanent"
    return SendFailed(f"smtp: {prefix}{code} {text}"[:500], outcome=outcome)
