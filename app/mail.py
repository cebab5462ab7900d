"""Compose subscriber mail and hand it to a transport.

Every message to a subscriber carries ``List-Unsubscribe`` with our signed
one-click link and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
(RFC 2369, RFC 8058), plus the same link visibly in both parts. Links are
built from ``PUBLIC_URL`` only, never from the request's Host header.

Transports: SMTP when ``SMTP_HOST`` is set; otherwise each message is written
to ``instance/mail/`` and its links are logged, so the service works with no
mail server. Files there are named by an address-hash prefix so an erasure can
remove them as well.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.policy import SMTPUTF8 as SMTPUTF8_POLICY
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from flask import current_app, render_template
from flask_babel import force_locale, gettext

from . import tokens
from .notices import Notice

log = logging.getLogger(__name__)


class PermanentMailError(Exception):
    """The message can never be delivered as it is (e.g. recipient refused)."""


class TransientMailError(Exception):
    """Delivery may succeed later (server down, timeout, 4xx)."""


# Replies to a person's own request about their data: no list, so no unsubscribe header.
TRANSACTIONAL = ("data_export", "data_erase", "erased")


def public_link(path: str) -> str:
    return current_app.config["PUBLIC_URL"] + path


def unsubscribe_link(notice_slug: str, email_hash: str) -> str:
    return public_link("/unsubscribe/" + tokens.make("unsubscribe", {"n": notice_slug, "h": email_hash}))


def manage_link(notice_slug: str, email_hash: str) -> str:
    """The person's own page; the notice only chooses the page's language and look."""
    return public_link("/manage/" + tokens.make("manage", {"n": notice_slug, "h": email_hash}))


@dataclass
class Composed:
    message: EmailMessage
    links: dict[str, str]
    kind: str
    email_hash: str


def compose(
    kind: str,
    *,
    notice: Notice,
    to: str,
    email_hash: str,
    lang: str,
    links: dict[str, str],
    extra: dict[str, object] | None = None,
) -> Composed:
    """Render ``templates/mail/<kind>.txt`` and ``.html`` into one message."""
    links = {
        **links,
        "unsubscribe": unsubscribe_link(notice.slug, email_hash),
        "manage": manage_link(notice.slug, email_hash),
    }
    lang = lang if lang in notice.languages else notice.languages[0]
    with force_locale(lang):
        controller = notice.controller["name"]
        context = {"notice": notice, "text": notice.text(lang), "links": links, "lang": lang, **(extra or {})}
        subject = {
            "confirmation": gettext("Please confirm your subscription to %(title)s", title=notice.text(lang)["title"]),
            "welcome": gettext("Welcome to %(title)s", title=notice.text(lang)["title"]),
            "art14": gettext("How %(controller)s uses your e-mail address", controller=controller),
            "data_export": gettext("Your data at %(controller)s: download link", controller=controller),
            "data_erase": gettext("Confirm the erasure of your data at %(controller)s", controller=controller),
            "erased": gettext("Your data at %(controller)s has been erased", controller=controller),
        }[kind]
        text_body = render_template(f"mail/{kind}.txt", **context)
        html_body = render_template(f"mail/{kind}.html", **context)

    # An internationalised address (RFC 6531) needs the SMTPUTF8 policy.
    msg = EmailMessage(policy=SMTP_POLICY if to.isascii() else SMTPUTF8_POLICY)
    sender_name, sender_addr = parseaddr(current_app.config["MAIL_FROM"])
    msg["From"] = formataddr((sender_name or notice.controller["name"], sender_addr))
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=urlsplit(current_app.config["PUBLIC_URL"]).hostname or "localhost")
    msg["Content-Language"] = lang
    if kind not in TRANSACTIONAL:
        msg["List-Unsubscribe"] = f"<{links['unsubscribe']}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if kind in ("confirmation", *TRANSACTIONAL):
        msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text_body)
    msg.add_alternative(html_body, subtype="html")
    return Composed(msg, links, kind, email_hash)


class Transport(Protocol):
    def send(self, composed: Composed) -> None: ...


class SmtpTransport:
    def __init__(self, config: dict) -> None:
        self.host = config["SMTP_HOST"]
        self.port = config["SMTP_PORT"]
        self.user = config["SMTP_USER"]
        self.password = config["SMTP_PASSWORD"]
        self.use_ssl = config["SMTP_SSL"]
        self.starttls = config["SMTP_STARTTLS"]
        self.timeout = config["SMTP_TIMEOUT"]

    def send(self, composed: Composed) -> None:
        try:
            if self.use_ssl:
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with client:
                if self.starttls:
                    client.starttls(context=ssl.create_default_context())
                if self.user:
                    client.login(self.user, self.password)
                client.send_message(composed.message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(500 <= code < 600 for code in codes):
                raise PermanentMailError(f"recipient refused ({', '.join(map(str, codes))})") from None
            raise TransientMailError(f"recipient deferred ({', '.join(map(str, codes))})") from None
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600 and exc.smtp_code not in (530, 535):
                raise PermanentMailError(f"SMTP {exc.smtp_code}") from None
            raise TransientMailError(f"SMTP {exc.smtp_code}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientMailError(f"SMTP unavailable: {type(exc).__name__}") from None


class FolderTransport:
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def send(self, composed: Composed) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        msgid = composed.message["Message-ID"].strip("<>").split("@")[0]
        path = self.directory / f"{composed.email_hash[:16]}-{msgid}-{composed.kind}.eml"
        path.write_bytes(composed.message.as_bytes())
        # The links carry tokens, never the address; logging them lets a
        # developer follow a sign-up without a mail server.
        log.info("mail written to %s; links: %s", path.name, composed.links)


def transport() -> Transport:
    config = current_app.config
    if config["SMTP_HOST"]:
        return SmtpTransport(config)
    return FolderTransport(config["MAIL_DIR"])


def forget_folder_mail(email_hash: str) -> int:
    """Delete mails written to the folder for one address (erasure)."""
    directory = Path(current_app.config["MAIL_DIR"])
    removed = 0
    for path in directory.glob(f"{email_hash[:16]}-*.eml"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
