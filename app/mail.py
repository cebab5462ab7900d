"""Compose subscriber mail and hand it to a transport.

Every message to a subscriber carries ``List-Unsubscribe`` with our signed
one-click link and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
(RFC 2369, RFC 8058), plus the same link visibly in both parts. Links are
built from ``PUBLIC_URL`` only, never from the request's Host header.

Transports: SMTP when ``SMTP_HOST`` is set; otherwise each message is written
to ``instance/mail/`` and its links are logged, so the service works with no
mail server. Files there are named by an address-hash prefix so an erasure can
remove them as well.

The message is written as bytes here (``_MimeWriter``), not through the email
package's ``EmailMessage``: every header of a subscriber mail is one the service
sets itself, and parsing each back into a structured header, then folding and
encoding it again, cost more CPU than the rest of a sign-up (bench/README.md).
What a receiver reads is checked on the wire by ``tests/test_mail_wire.py``.
"""

from __future__ import annotations

import binascii
import logging
import os
import re
import secrets
import smtplib
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Protocol

from babel.lists import format_list
from flask import current_app, render_template
from flask_babel import force_locale, gettext

from . import tokens
from .failures import Permanent, RetryLater
from .notices import Notice

log = logging.getLogger(__name__)


class PermanentMailError(Permanent):
    """The message can never be delivered as it is (e.g. recipient refused)."""


class TransientMailError(RetryLater):
    """Delivery may succeed later (server down, timeout, 4xx)."""


# Replies to a person's own request about their data: no list, so no unsubscribe header.
TRANSACTIONAL = ("data_export", "data_erase", "erased")
# The mails that answer a request the person made (a sign-up, a data request).
AUTO_REPLIES = ("confirmation", *TRANSACTIONAL)

# Structured fields a receiver parses as written (RFC 2369, RFC 8058, RFC 5322 msg-id):
# RFC 2047 encoded-words are not allowed in them, so they go out as one line of ASCII,
# never folded or encoded (``_MimeWriter.verbatim``), or not at all.
MAX_HEADER_LINE = 998  # RFC 5322 section 2.1.1, without the CRLF


def public_link(path: str) -> str:
    return current_app.config["PUBLIC_URL"] + path


def unsubscribe_link(notice_slug: str, subscription_ref: str, email_hash: str) -> str:
    token = tokens.link("unsubscribe", notice_slug, subscription_ref, email_hash=email_hash)
    return public_link("/unsubscribe/" + token)


def manage_link(notice_slug: str, subscription_ref: str, email_hash: str) -> str:
    """The person's own page, for the address the mail goes to."""
    return public_link("/manage/" + tokens.link("manage", notice_slug, subscription_ref, email_hash=email_hash))


def sender_domain() -> str:
    """The domain mail is sent from: ``MAIL_FROM``'s, where Message-IDs and DKIM belong."""
    _, address = parseaddr(current_app.config["MAIL_FROM"])
    return address.rpartition("@")[2] or "localhost"


@dataclass
class Composed:
    raw: bytes  # the message as composed, CRLF line ends, unsigned
    to: str
    message_id: str  # without its angle brackets
    smtputf8: bool  # the recipient's address is not ASCII: RFC 6531 (SMTPUTF8) is needed
    links: dict[str, str]
    kind: str
    email_hash: str

    def as_sent(self) -> bytes:
        """The bytes that go on the wire (and into the folder): signed when DKIM is set up."""
        signer = current_app.extensions.get("dkim_signer")
        return signer.sign(self.raw) if signer is not None else self.raw


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
FOLD_AT = 78  # RFC 5322 section 2.1.1: lines SHOULD be no longer


class _MimeWriter:
    """A multipart/alternative message of one text and one HTML part, as bytes.

    Headers are written as RFC 5322 and RFC 2047 have them: text that is not ASCII
    (a subject, a display name) as encoded-words, folded below 78 characters; the
    structured fields (``verbatim``) exactly as given, one line of ASCII.
    Each part is UTF-8, 7bit when it is ASCII in short lines, quoted-printable
    otherwise (lines of at most 76 characters, so any relay carries it unchanged and
    a DKIM body hash holds).
    """

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def text(self, name: str, value: str) -> None:
        """Unstructured text (RFC 5322 3.6.5): encoded-words where it is not ASCII."""
        value = " ".join(_CONTROL.sub(" ", value).split())  # one space between words: no blank folded line
        if value.isascii():
            self.lines.append(_fold_ascii(name, value))
        else:
            self.lines.append(f"{name}: {_encoded_words(value, len(name) + 2)}\r\n".encode("ascii"))

    def mailbox(self, name: str, display: str, address: str, *, utf8: bool = False) -> None:
        """One address, with an optional display name (a phrase, or encoded-words)."""
        if _CONTROL.search(address) or not address or any(c in address for c in " <>,;\"()"):
            raise ValueError(f"{name}: not a single plain address")
        display = " ".join(_CONTROL.sub(" ", display).split())
        if not display:
            line = f"{name}: {address}"
        else:
            # A phrase as RFC 5322 has it (quoted where it must be), or encoded-words.
            phrase = (
                formataddr((display, "x@x")).rpartition(" <")[0]
                if display.isascii()
                else _encoded_words(display, len(name) + 2)
            )
            line = f"{name}: {phrase} <{address}>"
            if "\r\n" in phrase or len(line) > FOLD_AT:
                line = f"{name}: {phrase}\r\n <{address}>"
        if not utf8 and not address.isascii():
            raise ValueError(f"{name}: an address that is not ASCII needs SMTPUTF8")
        self.lines.append(line.encode("utf-8") + b"\r\n")

    def verbatim(self, name: str, value: str) -> None:
        line = f"{name}: {value}"
        if not value.isascii() or _CONTROL.search(value) or len(line) > MAX_HEADER_LINE:
            raise ValueError(f"{name} must be one line of ASCII of at most {MAX_HEADER_LINE} characters")
        self.lines.append(line.encode("ascii") + b"\r\n")

    def alternative(self, text_body: str, html_body: str) -> bytes:
        """The headers so far, then the two parts; the message's bytes."""
        parts = [_part("plain", text_body), _part("html", html_body)]
        boundary = "=_" + secrets.token_hex(16)
        while any(boundary.encode("ascii") in part for part in parts):  # never, with 128 random bits
            boundary = "=_" + secrets.token_hex(16)
        delimiter = b"--" + boundary.encode("ascii")
        return b"".join(
            [
                *self.lines,
                b"MIME-Version: 1.0\r\n",
                f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'.encode("ascii"),
                b"\r\n",
                # The CRLF before a delimiter belongs to it (RFC 2046 5.1.1): each part keeps its own last line end.
                *(delimiter + b"\r\n" + part + b"\r\n" for part in parts),
                delimiter + b"--\r\n",
            ]
        )


# RFC 2047 5(3): what a Q encoded-word in a phrase may carry as itself; a space is "_".
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_BYTE = {b: chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in range(256)}
_Q_WORD_MAX = 75  # RFC 2047 2: an encoded-word is at most 75 characters
_Q_OVERHEAD = len("=?utf-8?q??=")


def _encoded_words(text: str, taken: int) -> str:
    """``text`` as UTF-8 Q encoded-words, one to a line, on a first line of which ``taken``
    characters are used. No word is longer than 75 characters or makes its line longer than
    78, and no character's bytes are split between two words (RFC 2047 5)."""
    words, word = [], ""
    room = min(_Q_WORD_MAX, FOLD_AT - taken) - _Q_OVERHEAD
    for char in text:
        encoded = "".join(_Q_BYTE[b] for b in char.encode("utf-8"))
        if word and len(word) + len(encoded) > room:
            words.append(f"=?utf-8?q?{word}?=")
            word, room = "", min(_Q_WORD_MAX, FOLD_AT - 1) - _Q_OVERHEAD  # later lines start with a space
        word += encoded
    words.append(f"=?utf-8?q?{word}?=")
    return "\r\n ".join(words)


def _fold_ascii(name: str, value: str) -> bytes:
    """``name: value`` folded at spaces below ``FOLD_AT`` where it can be (a longer word stays whole)."""
    lines, line = [], f"{name}:"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > FOLD_AT and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _part(subtype: str, body: str) -> bytes:
    """One UTF-8 text part: its headers, a blank line and its encoded body."""
    data = body.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").encode("utf-8") + b"\n"
    data = data.replace(b"\n", b"\r\n")
    if data.isascii() and max(map(len, data.split(b"\r\n"))) <= FOLD_AT:
        cte = "7bit"
    else:
        cte, data = "quoted-printable", binascii.b2a_qp(data, istext=True)
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    return head.encode("ascii") + data


def compose(
    kind: str,
    *,
    notice: Notice,
    to: str,
    email_hash: str,
    subscription_ref: str | None,
    lang: str,
    links: dict[str, str],
    extra: dict[str, object] | None = None,
) -> Composed:
    """Render ``templates/mail/<kind>.txt`` and ``.html`` into one message.

    Every list mail (all but ``TRANSACTIONAL``) belongs to a subscription, whose ref its
    unsubscribe and manage links name.
    """
    links = dict(links)
    if subscription_ref is not None:
        links["unsubscribe"] = unsubscribe_link(notice.slug, subscription_ref, email_hash)
        links["manage"] = manage_link(notice.slug, subscription_ref, email_hash)
    elif kind not in TRANSACTIONAL:
        raise ValueError(f"a {kind} mail needs the subscription its unsubscribe link names")
    lang = lang if lang in notice.languages else notice.languages[0]
    with force_locale(lang):
        controller = notice.controller["name"]
        # A data link covers every controller holding the address (``extra["controllers"]``):
        # its mails name them all, as a list in the mail's language ("A och B").
        given = (extra or {}).get("controllers")
        named = [str(name) for name in given if name] if isinstance(given, list | tuple) else []
        named = named or [controller]
        controllers = format_list(named, locale=lang)
        context = {
            "notice": notice,
            "text": notice.text(lang),
            "links": links,
            "lang": lang,
            **(extra or {}),
            "controllers": named,
            "controllers_text": controllers,
        }
        subject = {
            "confirmation": gettext("Please confirm your subscription to %(title)s", title=notice.text(lang)["title"]),
            "welcome": gettext("Welcome to %(title)s", title=notice.text(lang)["title"]),
            "art14": gettext("How %(controller)s uses your e-mail address", controller=controller),
            "data_export": gettext("Your data at %(controller)s: download link", controller=controllers),
            "data_erase": gettext("Confirm the erasure of your data at %(controller)s", controller=controllers),
            "erased": gettext("Your data at %(controller)s has been erased", controller=controllers),
        }[kind]
        text_body = render_template(f"mail/{kind}.txt", **context)
        html_body = render_template(f"mail/{kind}.html", **context)

    msg = _MimeWriter()
    utf8 = not to.isascii()
    sender_name, sender_addr = parseaddr(current_app.config["MAIL_FROM"])
    msg.mailbox("From", sender_name or notice.controller["name"], sender_addr)
    msg.mailbox("To", "", to, utf8=utf8)
    msg.text("Subject", subject)
    msg.verbatim("Date", format_datetime(datetime.now(UTC)))  # "+0000": "-0000" would mean "zone unknown"
    # Random from ``secrets``: make_msgid would draw on the shared ``random`` state and
    # put the host's process id into every message.
    message_id = f"{secrets.token_hex(16)}@{sender_domain()}"
    msg.verbatim("Message-ID", f"<{message_id}>")
    msg.verbatim("Content-Language", lang)  # RFC 3282: the language the person reads (sv, en)
    if kind not in TRANSACTIONAL:
        # RFC 2919: one list per notice, named under the sending domain. Without it a
        # List-Unsubscribe reads to filters as half a list's headers.
        msg.verbatim("List-Id", f"<{notice.slug}.{sender_domain()}>")
        msg.verbatim("List-Unsubscribe", f"<{links['unsubscribe']}>")
        msg.verbatim("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
    if kind in AUTO_REPLIES:
        # RFC 3834: made by a machine in answer to the person's own request, so vacation
        # responders and the like do not answer it. List mail (welcome, Art. 14) is not.
        msg.verbatim("Auto-Submitted", "auto-generated")
    raw = msg.alternative(text_body, html_body)
    return Composed(raw, to, message_id, utf8, links, kind, email_hash)


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
        self.sender = parseaddr(config["MAIL_FROM"])[1]

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
                # The bytes as composed (and signed), not a re-rendering by send_message:
                # a DKIM signature covers exactly these.
                options = ["SMTPUTF8", "BODY=8BITMIME"] if composed.smtputf8 else []
                client.sendmail(self.sender, [composed.to], composed.as_sent(), mail_options=options)
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
        # A mail holds the address and live links: readable by the service's user only.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        msgid = composed.message_id.split("@")[0]
        path = self.directory / f"{composed.email_hash[:16]}-{msgid}-{composed.kind}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(composed.as_sent())
        # The file, not its links: links carry tokens, and no log line holds one. A developer
        # opens the file (or `instance/mail/`) to follow a sign-up without a mail server.
        log.info("%s mail written to %s", composed.kind, path)


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
