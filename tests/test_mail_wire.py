"""Every mail as a receiver reads it: the raw bytes the SMTP server accepted.

Python's parser would decode an RFC 2047 encoded ``List-Unsubscribe`` back into a
URL, but a receiver must not (RFC 2047 section 5: no encoded-words in structured
fields), and then finds no unsubscribe URL. So nothing here parses headers with
the email package: each header is unfolded from the bytes and compared as text,
and the one-click POST goes to the URL exactly as the raw header gives it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import dkim
import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Subscription

from .conftest import base_env
from .support import REPO, SmtpSink, csrf_token

# A realistic 30-character host: the URL length target is stated for one.
HOST = "nyhetsbrev.munkeby-systemet.se"
PUBLIC_URL = f"https://{HOST}"
SENDER_DOMAIN = "utskick.example.se"
MAIL_FROM = f"Nyhetsbrev från Östra Kontoret <nyhetsbrev@{SENDER_DOMAIN}>"
SENDER_NAME = "Nyhetsbrev från Östra Kontoret"
LIST_KINDS = ("confirmation", "welcome", "art14")
SUBJECTS = {
    "confirmation": {
        "munkeby": "Bekräfta din prenumeration på Munkeby Systems nyhetsbrev",
        "mysoft": "Bekräfta din prenumeration på Mysoft AB:s nyhetsbrev",
    },
}
# Where RFC 2047 encoded-words belong: unstructured text and display names, nowhere else.
ENCODED_WORDS_ALLOWED = {"subject", "from"}
RAW_URL = re.compile(r"<(https://[\x21-\x3b\x3d\x3f-\x7e]+)>")  # printable ASCII but < and >


def header_block(raw: bytes) -> str:
    head, sep, _ = raw.partition(b"\r\n\r\n")
    assert sep, "no blank line after the headers"
    return head.decode("ascii")  # an ASCII recipient's mail has ASCII headers only


def raw_headers(raw: bytes) -> list[tuple[str, str]]:
    """(name, value) as written, after unfolding (RFC 5322 2.2.3): nothing decoded."""
    block = header_block(raw)
    for line in block.split("\r\n"):
        assert len(line) <= 998, f"header line over 998 characters: {line[:60]}..."
    unfolded = re.sub(r"\r\n(?=[ \t])", "", block)
    headers = []
    for line in unfolded.split("\r\n"):
        name, colon, value = line.partition(":")
        assert colon and re.fullmatch(r"[!-9;-~]+", name), f"not a header line: {line!r}"
        headers.append((name, value.strip()))
    return headers


def one(headers: list[tuple[str, str]], name: str) -> str:
    values = [v for n, v in headers if n.lower() == name.lower()]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def decoded(value: str) -> str:
    return str(make_header(decode_header(value)))


def body_links(raw: bytes) -> tuple[set[str], set[str]]:
    """The service's links in the text part and the hrefs in the HTML part."""
    from email import message_from_bytes, policy

    message = message_from_bytes(raw, policy=policy.default)
    plain = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    url = re.escape(PUBLIC_URL) + r"/[A-Za-z0-9._~/?=&%-]+"
    return set(re.findall(url, plain)), set(re.findall(r'href="(' + url + ')"', html))


def check_mail(raw: bytes, kind: str, slug: str) -> str | None:
    """Every header as sent; answers the one-click URL of a list mail."""
    headers = raw_headers(raw)
    for name, value in headers:
        if "=?" in value:
            assert name.lower() in ENCODED_WORDS_ALLOWED, f"encoded-word in {name}: {value}"
    assert decoded(one(headers, "From")) == f"{SENDER_NAME} <nyhetsbrev@{SENDER_DOMAIN}>"
    name, _, address = one(headers, "From").rpartition(" <")
    assert "=?utf-8?" in name and address == f"nyhetsbrev@{SENDER_DOMAIN}>"  # only the name is encoded
    if kind in SUBJECTS:
        assert decoded(one(headers, "Subject")) == SUBJECTS[kind][slug]
    assert re.fullmatch(r"<[0-9a-f]{32}@" + re.escape(SENDER_DOMAIN) + ">", one(headers, "Message-ID"))
    assert parsedate_to_datetime(one(headers, "Date")).tzinfo is not None
    assert one(headers, "MIME-Version") == "1.0"
    assert one(headers, "Content-Language") == "sv"  # RFC 3282: the language the person signed up in
    assert one(headers, "Content-Type").startswith("multipart/alternative;")
    # RFC 3834: only the answers to the person's own request say they were made by a machine.
    auto = [v for n, v in headers if n.lower() == "auto-submitted"]
    assert auto == (["auto-generated"] if kind in ("confirmation", "data_export", "data_erase", "erased") else [])
    plain_links, html_links = body_links(raw)
    assert plain_links == html_links, "the text and HTML parts must offer the same links"
    if kind not in LIST_KINDS:
        assert not [n for n, _ in headers if n.lower().startswith("list-")]
        return None
    header = one(headers, "List-Unsubscribe")
    match = RAW_URL.fullmatch(header)
    assert match, f"List-Unsubscribe is not a plain <https://...>: {header!r}"
    assert one(headers, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert one(headers, "List-Id") == f"<{slug}.{SENDER_DOMAIN}>"
    url = match.group(1)
    assert url.startswith(PUBLIC_URL + "/unsubscribe/") and len(url) < 120, url
    assert url in plain_links
    return url


@pytest.fixture
def app_env(app_env: dict[str, str], smtp: SmtpSink) -> dict[str, str]:
    return {
        **app_env,
        "PUBLIC_URL": PUBLIC_URL,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "MAIL_FROM": MAIL_FROM,
    }


def last_to(smtp: SmtpSink, address: str) -> bytes:
    found = [content for _, rcpt, content in smtp.received if rcpt == [address]]
    assert found, f"no mail to {address}"
    return found[-1]


def link_from(raw: bytes, kind: str) -> str:
    plain, _ = body_links(raw)
    [url] = {u for u in plain if urlsplit(u).path.startswith(f"/{kind}/")}
    return urlsplit(url).path


def sign_up(client, slug: str, address: str):  # type: ignore[no-untyped-def]
    token = csrf_token(client, f"/{slug}/subscribe")
    data = {"csrf_token": token, "email": address, "name": "Åsa Öberg", "consent": "y"}
    return client.post(f"/{slug}/subscribe", data=data)


def status(app, slug: str, address: str) -> str | None:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(
            select(Subscription.status).where(Subscription.notice == slug, Subscription.email == address)
        ).scalar_one_or_none()


def one_click(client, url: str):  # type: ignore[no-untyped-def]
    """What a mailbox provider sends (RFC 8058 section 3.1): no cookie, the body only."""
    client.delete_cookie("session")
    return client.post(
        urlsplit(url).path,
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )


def every_mail_kind(app, client, runner, smtp: SmtpSink, slug: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """One mail of each kind the notice sends, as the SMTP server received it.

    ``confirmation`` went to a person who then confirmed; ``pending`` is a confirmation
    mail to bo@firma.se, who did not; ``art14`` went to cecilia@firma.se (imported), and
    the data mails to the people who asked.
    """
    mails: dict[str, bytes] = {}
    assert sign_up(client, slug, "anna@firma.se").status_code == 303
    mails["confirmation"] = last_to(smtp, "anna@firma.se")
    assert client.post(link_from(mails["confirmation"], "confirm")).status_code == 200
    mails["welcome"] = last_to(smtp, "anna@firma.se")
    assert sign_up(client, slug, "bo@firma.se").status_code == 303
    mails["pending"] = last_to(smtp, "bo@firma.se")
    # the Art. 14 mail to a contact imported on legitimate interest, where the notice allows it
    if "legitimate_interest" in app.extensions["notices"][slug].import_lawful_bases:
        source = ["--source", "https://www.firma.se/kontakt", "--source-date", "2026-11-01"]
        imported = runner.invoke(
            args=["contacts", "import", "-", "--notice", slug, "--basis", "legitimate_interest", *source],
            input="email\ncecilia@firma.se\n",
        )
        assert imported.exit_code == 0, imported.output
        assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
        mails["art14"] = last_to(smtp, "cecilia@firma.se")
    # the replies to a person's own requests about their data
    manage = link_from(mails["welcome"], "manage")
    assert client.post(manage + "/request", data={"kind": "export"}).status_code == 303
    mails["data_export"] = last_to(smtp, "anna@firma.se")
    assert sign_up(client, slug, "dan@firma.se").status_code == 303
    assert client.post(link_from(last_to(smtp, "dan@firma.se"), "confirm")).status_code == 200
    assert client.post(link_from(last_to(smtp, "dan@firma.se"), "manage") + "/request", data={"kind": "erase"})
    mails["data_erase"] = last_to(smtp, "dan@firma.se")
    assert client.post(link_from(mails["data_erase"], "manage/data")).status_code == 200
    mails["erased"] = last_to(smtp, "dan@firma.se")
    return mails


def kind_of(name: str) -> str:
    return "confirmation" if name == "pending" else name


@pytest.mark.parametrize("slug", ["munkeby", "mysoft"])
def test_every_mail_kind_reads_right_as_sent_and_its_raw_header_unsubscribes(app, client, runner, smtp, slug):
    gone = None if app.extensions["notices"][slug].deletes_on_opt_out else "unsubscribed"
    mails = every_mail_kind(app, client, runner, smtp, slug)
    urls = {name: check_mail(raw, kind_of(name), slug) for name, raw in mails.items()}
    for name in ("confirmation", "welcome"):  # every link a person clicks fits a short line
        plain, _ = body_links(mails[name])
        assert all(len(url) < 120 for url in plain if "/privacy" not in url), plain

    # One click on the URL as the raw header gives it, from each list mail.
    assert one_click(client, urls["pending"] or "").status_code == 200
    assert status(app, slug, "bo@firma.se") == gone
    assert one_click(client, urls["welcome"] or "").status_code == 200
    assert status(app, slug, "anna@firma.se") == gone
    if "art14" in urls:
        assert one_click(client, urls["art14"] or "").status_code == 200
        assert status(app, slug, "cecilia@firma.se") == gone


def test_links_keep_working_after_the_address_changes(app, client, smtp):
    """The link names the subscription, not the address: a corrected address keeps it valid."""
    assert sign_up(client, "munkeby", "old@firma.se").status_code == 303
    assert client.post(link_from(last_to(smtp, "old@firma.se"), "confirm")).status_code == 200
    url = check_mail(last_to(smtp, "old@firma.se"), "welcome", "munkeby") or ""
    with app.app_context():
        from app import consent

        ref = db.session.execute(select(Subscription.ref).where(Subscription.email == "old@firma.se")).scalar_one()
        consent.rectify(ref, None, "new@firma.se", consent.Facts(channel="cli", actor="test"))
    assert one_click(client, url).status_code == 200
    assert status(app, "munkeby", "new@firma.se") == "unsubscribed"


def test_an_english_sign_up_gets_an_english_mail_that_says_so(client, smtp):
    token = csrf_token(client, "/munkeby/subscribe?lang=en")
    data = {"csrf_token": token, "email": "eng@firma.se", "consent": "y"}
    assert client.post("/munkeby/subscribe?lang=en", data=data).status_code == 303
    headers = raw_headers(last_to(smtp, "eng@firma.se"))
    assert one(headers, "Content-Language") == "en"
    assert decoded(one(headers, "Subject")) == "Please confirm your subscription to Munkeby Systems newsletter"


def test_an_internationalised_address_gets_its_mail_over_smtputf8_and_it_reads_right(app, client, smtp):
    """RFC 6531: the address goes raw in UTF-8, and the server is asked for SMTPUTF8."""
    assert sign_up(client, "munkeby", "Åsa@Exämple.SE").status_code == 303
    address = "åsa@xn--exmple-cua.se"  # as the service keeps it (the domain in its ASCII form)
    raw = last_to(smtp, address)
    assert "SMTPUTF8" in smtp.mail_options[-1]
    head = raw.partition(b"\r\n\r\n")[0].decode("utf-8")
    assert f"\r\nTo: {address}\r\n" in head
    url = check_mail(raw.replace(address.encode("utf-8"), b"asa@xn--exmple-cua.se"), "confirmation", "munkeby")
    assert client.post(link_from(raw, "confirm")).status_code == 200
    assert url is not None and status(app, "munkeby", address) == "subscribed"


def test_long_names_and_subjects_fold_below_78_and_decode_to_what_was_set(app_env, tmp_path):
    """Every header line of a composed mail is at most 78 characters, encoded-words at most 75
    (RFC 2047 2), and what a receiver decodes is the text the service set."""
    from app import create_app, mail

    name = "Nyhetsbrev från Östra Kontoret och avdelningen för riktigt långa namn i Övre Norrland"
    env = {**app_env, "MAIL_FROM": f"{name} <nyhetsbrev@{SENDER_DOMAIN}>"}
    app = create_app(env=env)
    notice = app.extensions["notices"]["munkeby"]
    with app.app_context():
        composed = mail.compose(
            "erased",
            notice=notice,
            to="anna@firma.se",
            email_hash="0" * 64,
            subscription_ref=None,
            lang="sv",
            links={"privacy": "https://x.example/p"},
            extra={"controllers": ["Munkeby Systems AB " * 3, "Mysoft AB med ett långt namn"], "consented": True},
        )
    head = header_block(composed.raw)
    assert all(len(line) <= 78 for line in head.split("\r\n")), head
    assert all(len(word) <= 75 for word in re.findall(r"=\?[^?]+\?[qQbB]\?[^?]*\?=", head))
    headers = raw_headers(composed.raw)
    assert decoded(one(headers, "From")) == f"{name} <nyhetsbrev@{SENDER_DOMAIN}>"
    assert "Mysoft AB med ett långt namn" in decoded(one(headers, "Subject"))
    with app.app_context():
        db.engine.dispose()


# --- DKIM -------------------------------------------------------------------

SELECTOR = "nl2026"
REQUIRED_SIGNED = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
}


@pytest.fixture(params=["rsa", "ed25519"])
def dkim_key(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """A key made by the command an operator runs, and the TXT record it printed."""
    key = tmp_path / "keys" / "dkim.pem"
    env = base_env(tmp_path / "keygen", f"sqlite:///{tmp_path / 'keygen.sqlite3'}")
    options = ["--selector", SELECTOR, "--domain", SENDER_DOMAIN, "--type", request.param, "--out", str(key)]
    made = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "mail", "dkim-keygen", *options],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert key.parent.stat().st_mode & 0o077 == 0  # in a folder it made for its owner only
    record = made.stdout.strip()
    assert record.startswith(f"{SELECTOR}._domainkey.{SENDER_DOMAIN}. IN TXT (")
    return key, "".join(re.findall(r'"([^"]*)"', record))


@pytest.fixture
def signed_env(app_env: dict[str, str], dkim_key: tuple[Path, str]) -> dict[str, str]:
    return {**app_env, "DKIM_DOMAIN": SENDER_DOMAIN, "DKIM_SELECTOR": SELECTOR, "DKIM_PRIVATE_KEY": str(dkim_key[0])}


def published(txt: str):  # type: ignore[no-untyped-def]
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return txt.encode("ascii") if name.rstrip(b".") == f"{SELECTOR}._domainkey.{SENDER_DOMAIN}".encode() else None

    return dnsfunc


def test_dkim_signature_covers_the_unsubscribe_headers_and_verifies(signed_env, dkim_key, smtp):
    from app import create_app

    app = create_app(env=signed_env)
    client = app.test_client()
    assert sign_up(client, "munkeby", "signed@firma.se").status_code == 303
    raw = last_to(smtp, "signed@firma.se")
    dnsfunc = published(dkim_key[1])
    assert dkim.verify(raw, dnsfunc=dnsfunc)

    headers = raw_headers(raw)
    assert headers[0][0] == "DKIM-Signature"
    tags = dict(t.strip().split("=", 1) for t in one(headers, "DKIM-Signature").split(";") if t.strip())
    assert tags["c"] == "relaxed/relaxed" and tags["d"] == SENDER_DOMAIN and tags["s"] == SELECTOR
    assert tags["a"] in ("rsa-sha256", "ed25519-sha256")
    assert REQUIRED_SIGNED <= {h.strip().lower() for h in tags["h"].split(":")}

    # The signature breaks if the unsubscribe URL is changed, or a second one added, on the way.
    changed = re.sub(rb"(List-Unsubscribe: <https://[^>]*)[A-Za-z0-9]>", rb"\1x>", raw, count=1)
    assert changed != raw and not dkim.verify(changed, dnsfunc=dnsfunc)
    added = raw.replace(b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://evil.example/u>\r\n\r\n", 1)
    assert not dkim.verify(added, dnsfunc=dnsfunc)
    app.extensions["after_response"].wait_idle(timeout=60)
    with app.app_context():
        db.engine.dispose()


def test_dkim_settings_are_all_or_none_and_the_key_must_be_usable(app_env, tmp_path):
    from app import create_app
    from app.config import ConfigError

    with pytest.raises(ConfigError, match="all of DKIM_DOMAIN"):
        create_app(env={**app_env, "DKIM_DOMAIN": SENDER_DOMAIN})
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello\n")
    with pytest.raises(ConfigError, match="not a readable"):
        create_app(
            env={**app_env, "DKIM_DOMAIN": SENDER_DOMAIN, "DKIM_SELECTOR": SELECTOR, "DKIM_PRIVATE_KEY": str(not_a_key)}
        )
