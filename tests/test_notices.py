"""Notice files are data: validated, versioned by what the person is shown."""

from __future__ import annotations

import html
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from babel import dates as babel_dates
from sqlalchemy import delete

from app import create_app
from app.extensions import db
from app.models import NoticeVersion
from app.notices import NoticeError, Transfer, load_notices, parse_notice

NOTICES = Path(__file__).resolve().parent.parent / "notices"


def copy_notices(tmp_path: Path) -> Path:
    target = tmp_path / "notices"
    shutil.copytree(NOTICES, target)
    return target


def test_both_controllers_load_with_their_rules():
    notices = load_notices(NOTICES, {})
    assert notices["munkeby"].opt_out_rule == "unsubscribe"
    assert notices["munkeby"].provider["kind"] == "mailchimp"
    assert notices["mysoft"].opt_out_rule == "delete"
    assert notices["mysoft"].provider["kind"] == "apsis"
    assert notices["mysoft"].fields == ("email",)
    assert len(notices["munkeby"].version) == 64


def test_changing_the_shown_text_makes_a_new_version(tmp_path):
    directory = copy_notices(tmp_path)
    before = load_notices(directory, {})["munkeby"].version
    path = directory / "munkeby.toml"
    path.write_text(path.read_text().replace("info@munkeby.se. Du kan", "info@munkeby.se.  Du kan"))
    assert load_notices(directory, {})["munkeby"].version != before


def test_provider_ids_from_the_environment_do_not_change_the_version():
    plain = load_notices(NOTICES, {})["munkeby"]
    overridden = load_notices(NOTICES, {"MUNKEBY_LIST_ID": "abc123"})["munkeby"]
    assert overridden.provider["list_id"] == "abc123"
    assert overridden.version == plain.version


def test_a_third_controller_is_just_a_new_file(tmp_path):
    directory = copy_notices(tmp_path)
    text = (directory / "mysoft.toml").read_text().replace('slug = "mysoft"', 'slug = "acme"')
    (directory / "acme.toml").write_text(text)
    assert set(load_notices(directory, {})) == {"munkeby", "mysoft", "acme"}


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('rule = "delete"', 'rule = "forget"', "opt_out.rule"),
        ('fields = ["email"]', 'fields = ["name"]', "collection.fields"),
        ('topic = "mysoft-newsletter"', 'topic = ""', "provider.topic"),
        ("unconfirmed_days = 30", "unconfirmed_days = -1", "retention"),
        ('slug = "mysoft"', 'slug = "other"', "file name"),
        ('"legitimate_interest", "consent"]', '"legitimate_interest", "contract"]', "collection.import_lawful_bases"),
        ('import_lawful_bases = ["legitimate_interest", "consent"]', "import_lawful_bases = []", "import_lawful_bases"),
        ('"legitimate_interest", "consent"]', '"consent", "consent"]', "collection.import_lawful_bases"),
        ('"legitimate_interest", "consent"]', '"consent"]', "import_lawful_basis must be one of"),
    ],
)
def test_malformed_notice_is_refused_with_the_key_named(tmp_path, old, new, message):
    directory = copy_notices(tmp_path)
    path = directory / "mysoft.toml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(NoticeError, match=message):
        load_notices(directory, {})


def test_optional_provider_ids_come_from_the_file_or_the_environment(tmp_path):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    path = tmp_path / "mysoft.toml"
    path.write_text(source.replace("# name_attribute = \"\"", 'name_attribute = "attr-name"'), encoding="utf-8")
    notice = parse_notice(path, {"MYSOFT_EMAIL_ATTRIBUTE": "attr-email"})
    assert notice.provider["name_attribute"] == "attr-name"
    assert notice.provider["email_attribute"] == "attr-email"
    assert "email_attribute" not in parse_notice(NOTICES / "mysoft.toml", {}).provider
    path.write_text(source.replace("# name_attribute = \"\"", "name_attribute = 7"), encoding="utf-8")
    with pytest.raises(NoticeError, match=r"provider\.name_attribute must be a non-empty string"):
        parse_notice(path, {})


def test_each_notice_names_the_bases_an_import_may_use():
    notices = load_notices(NOTICES, {})
    assert notices["munkeby"].import_lawful_bases == ("consent",)
    assert notices["mysoft"].import_lawful_bases == ("legitimate_interest", "consent")
    assert notices["mysoft"].import_lawful_basis == "legitimate_interest"


def test_without_the_list_an_import_may_use_only_the_notices_import_basis(tmp_path):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    path = tmp_path / "mysoft.toml"
    path.write_text(source.replace('import_lawful_bases = ["legitimate_interest", "consent"]\n', ""), encoding="utf-8")
    assert parse_notice(path, {}).import_lawful_bases == ("legitimate_interest",)
    path.write_text(
        source.replace('import_lawful_bases = ["legitimate_interest", "consent"]\n', "").replace(
            'import_lawful_basis = "legitimate_interest"\n', ""
        ),
        encoding="utf-8",
    )
    assert parse_notice(path, {}).import_lawful_bases == ("consent",)  # the sign-up's basis
    path.write_text(source.replace('import_lawful_basis = "legitimate_interest"\n', ""), encoding="utf-8")
    assert parse_notice(path, {}).import_lawful_basis == "legitimate_interest"  # the first one listed


def test_the_bases_an_import_may_use_are_part_of_the_version(tmp_path):
    # They are a rule of where addresses come from, so the evidence of an import
    # (its notice version) says which bases were allowed when it ran.
    directory = copy_notices(tmp_path)
    before = load_notices(directory, {})["munkeby"].version
    path = directory / "munkeby.toml"
    path.write_text(
        path.read_text(encoding="utf-8").replace('= ["consent"]', '= ["consent", "legitimate_interest"]'),
        encoding="utf-8",
    )
    assert load_notices(directory, {})["munkeby"].version != before


# The versions of the shipped notices, as recorded with every consent given under them.
# Reading the same file must give the same version, whatever the code that reads it.
# Changed on purpose, for both notices, when they started to state their transfers outside
# the EU/EEA (Munkeby: Mailchimp/Intuit in the US; Mysoft: none), to mark their headings
# ("## ") and to open with a paragraph (Mysoft's is new). Earlier pins: munkeby b66e621c...,
# mysoft 104b724a... Changed on purpose for Mysoft when its body stopped claiming a cookie
# that protects the form (the public pages set none): earlier pin d204e254... Munkeby's
# version is untouched by the explicit `transfers` statement (its [[transfers]] were
# already in its version, as Mysoft's empty list was). Evidence recorded under an earlier
# version still links to its stored text (tests/test_notice_versions.py).
SHIPPED_VERSIONS = {
    "munkeby": "298d1e26fa71ea6b796b44371db01c3bd53a7ecbfa810b9589823cc340fcbfc0",
    "mysoft": "ac8e0d68cbee12a4d269d2df13dd50c1baa57f705dca4966ed0f208780d52ff3",
}


def test_the_shipped_notices_keep_their_versions():
    notices = load_notices(NOTICES, {})
    assert {slug: notice.version for slug, notice in notices.items()} == SHIPPED_VERSIONS


@pytest.mark.parametrize(
    "old, new, messages",
    [
        ('kind = "apsis"', "kind = []", ["provider.kind must be one of"]),
        ('languages = ["sv", "en"]', "languages = 7", ["languages must be from"]),
        ('fields = ["email"]', "fields = true", ["collection.fields must include email"]),
        ('name = "Mysoft AB"\nemail = "info@mysoft.se"', 'name = ""', ["controller.name", "controller.email"]),
        ("evidence_days = 1095", "evidence_days = true", ["retention.evidence_days must be a positive whole number"]),
        ('title = "Mysoft AB newsletter"', 'title = "  "', ["text.en.title is required"]),
    ],
)
def test_every_problem_is_named_by_its_key_never_a_crash(tmp_path, old, new, messages):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    assert old in source
    path = tmp_path / "mysoft.toml"
    path.write_text(source.replace(old, new), encoding="utf-8")
    with pytest.raises(NoticeError) as refused:
        parse_notice(path, {})
    assert str(refused.value).startswith("mysoft.toml: ")
    assert all(message in str(refused.value) for message in messages)


def test_an_override_fills_an_empty_provider_id_and_an_empty_override_does_not_count(tmp_path):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    path = tmp_path / "mysoft.toml"
    path.write_text(source.replace('topic = "mysoft-newsletter"', 'topic = ""'), encoding="utf-8")
    assert parse_notice(path, {"MYSOFT_TOPIC": "from-env"}).provider["topic"] == "from-env"
    with pytest.raises(NoticeError, match=r"provider\.topic must be a non-empty string"):
        parse_notice(path, {"MYSOFT_TOPIC": ""})


# --- transfers outside the EU/EEA ---------------------------------------------------

MAILCHIMP_TRANSFER = """[[transfers]]
recipient = "Intuit Inc. (Mailchimp)"
country = "US"
safeguard = "dpf"
fallback = "scc"
"""


def test_munkeby_states_where_mailchimp_processes_the_data_and_mysoft_states_no_transfer():
    notices = load_notices(NOTICES, {})
    assert notices["munkeby"].transfers == (
        Transfer(recipient="Intuit Inc. (Mailchimp)", country="US", safeguard="dpf", fallback="scc"),
    )
    assert notices["mysoft"].transfers == ()
    # The body says it too, beside the promise kept from the controller's own notice.
    for lang, promise, transfer in (
        ("sv", "Vi\nlämnar eller säljer aldrig", "behandlar uppgifterna i USA"),
        ("en", "We never pass on or sell", "processes the data in the\nUnited States"),
    ):
        body = notices["munkeby"].texts[lang]["body"]
        assert promise in body and transfer in body
        assert "Privacy Framework" in body and "Privacy Shield" not in body


def without_transfers_statement(source: str) -> str:
    """Mysoft's file without its top-level ``transfers = []``: a notice that states nothing."""
    assert "\ntransfers = []\n" in source
    return source.replace("\ntransfers = []\n", "\n", 1)


def with_transfer(tmp_path: Path, table: str) -> Path:
    source = without_transfers_statement((NOTICES / "mysoft.toml").read_text(encoding="utf-8"))
    path = tmp_path / "mysoft.toml"
    path.write_text(source.replace("[opt_out]", table + "\n[opt_out]", 1), encoding="utf-8")
    return path


def test_a_transfer_without_a_fallback_is_read_as_written(tmp_path):
    path = with_transfer(tmp_path, '[[transfers]]\nrecipient = "Acme Ltd"\ncountry = "GB"\nsafeguard = "adequacy"\n')
    assert parse_notice(path, {}).transfers == (Transfer("Acme Ltd", "GB", "adequacy", None),)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('safeguard = "dpf"', 'safeguard = "privacy_shield"', "transfers.safeguard must be one of"),
        ('fallback = "scc"', 'fallback = "consent"', "transfers.fallback must be one of"),
        ('country = "US"', 'country = "USA"', "transfers.country must be an ISO 3166-1 alpha-2 code"),
        ('country = "US"', 'country = "XX"', "transfers.country must be an ISO 3166-1 alpha-2 code"),
        ('country = "US"', 'country = "us"', "transfers.country must be an ISO 3166-1 alpha-2 code"),
        ('country = "US"', 'country = "SE"', "is in the EU/EEA"),
        ('country = "US"', 'country = "NO"', "is in the EU/EEA"),
        ('country = "US"', 'country = "IN"', "'dpf' applies to the US only"),
        ('fallback = "scc"', 'fallback = "dpf"', "transfers.fallback must differ"),
        ('fallback = "scc"', 'fallbak = "scc"', "transfers.0.fallbak is not a known key"),
        ('country = "US"\n', "", "transfers.0.country is required"),
        ('recipient = "Intuit Inc. (Mailchimp)"', 'recipient = " "', "transfers.0.recipient must be a non-empty"),
        ('safeguard = "dpf"', "safeguard = 1", "transfers.0.safeguard must be one of"),
    ],
)
def test_a_transfer_the_schema_cannot_vouch_for_is_refused_with_the_key_named(tmp_path, old, new, message):
    assert old in MAILCHIMP_TRANSFER
    path = with_transfer(tmp_path, MAILCHIMP_TRANSFER.replace(old, new))
    with pytest.raises(NoticeError, match=re.escape(message)) as refused:
        parse_notice(path, {})
    assert str(refused.value).startswith("mysoft.toml: ")


@pytest.mark.parametrize("code", "GF GP MQ RE YT MF AX".split())
def test_eu_territory_with_an_iso_code_of_its_own_is_no_third_country(tmp_path, code):
    # France's outermost regions and Åland are EU territory: data processed there has not left the EU.
    table = f'[[transfers]]\nrecipient = "Acme SAS"\ncountry = "{code}"\nsafeguard = "scc"\n'
    with pytest.raises(NoticeError, match=re.escape(f"transfers.country {code!r} is in the EU/EEA")):
        parse_notice(with_transfer(tmp_path, table), {})


def test_transfers_that_are_not_tables_are_refused(tmp_path):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    path = tmp_path / "mysoft.toml"
    path.write_text('transfers = "US"\n' + without_transfers_statement(source), encoding="utf-8")
    with pytest.raises(NoticeError, match=r"transfers must be a list of \[\[transfers\]\] tables"):
        parse_notice(path, {})


def test_the_transfers_are_part_of_the_version(tmp_path):
    # They are told to the person (Art. 13(1)(f)), so evidence must say which ones were stated.
    before = parse_notice(NOTICES / "mysoft.toml", {}).version
    path = with_transfer(tmp_path, MAILCHIMP_TRANSFER)
    stated = parse_notice(path, {}).version
    assert stated != before
    path.write_text(path.read_text(encoding="utf-8").replace('fallback = "scc"', 'fallback = "bcr"'), encoding="utf-8")
    assert parse_notice(path, {}).version not in (before, stated)


# --- the notice page: paragraphs and headings, transfers, the version's date -----------

ELEMENT = re.compile(r"<(h1|h2|p)\b[^>]*>(.*?)</\1>", re.DOTALL)


def shown(client, path: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """The page's headings and paragraphs in order, as text, from its first heading on."""
    page = client.get(path)
    assert page.status_code == 200
    return [
        (tag, " ".join(html.unescape(re.sub(r"<[^>]+>", "", inner)).split()))
        for tag, inner in ELEMENT.findall(page.get_data(as_text=True))
    ]


def file_headings(slug: str, lang: str) -> list[str]:
    body = tomllib.loads((NOTICES / f"{slug}.toml").read_text(encoding="utf-8"))["text"][lang]["body"]
    return [line[3:].strip() for line in body.splitlines() if line.startswith("## ")]


@pytest.mark.parametrize("slug", ["munkeby", "mysoft"])
@pytest.mark.parametrize("lang", ["sv", "en"])
def test_the_notice_opens_with_a_paragraph_and_its_headings_are_exactly_the_notices(client, slug, lang):
    notice = load_notices(NOTICES, {})[slug]
    elements = shown(client, f"/{slug}/privacy?lang={lang}")
    body = notice.texts[lang]["body"]
    first_sentence = " ".join(re.split(r"[.:]\s", body, maxsplit=1)[0].split())
    assert not first_sentence.startswith("#") and len(first_sentence) > 40
    assert elements[0][0] == "h1"
    assert elements[1][0] == "p" and elements[1][1].startswith(first_sentence)
    headings = [text for tag, text in elements if tag == "h2"]
    # The notice's own headings, then the transfers' heading the page adds.
    assert headings[:-1] == file_headings(slug, lang) and len(headings[:-1]) >= 5
    # Each heading is followed by its paragraph, never by another heading.
    kinds = [tag for tag, _ in elements]
    assert "h2h2" not in "".join(kinds)


def test_the_transfers_have_their_own_heading(client):
    munkeby = shown(client, "/munkeby/privacy?lang=en")
    at = munkeby.index(("h2", "Transfers outside the EU/EEA"))
    assert munkeby[at + 1] == (
        "p",
        "Intuit Inc. (Mailchimp) processes the data in the United States, under the EU-US Data Privacy Framework "
        "(the Commission's adequacy decision of 10 July 2023); if that falls away, under the standard contractual "
        "clauses.",
    )
    mysoft = shown(client, "/mysoft/privacy?lang=en")
    at = mysoft.index(("h2", "Transfers outside the EU/EEA"))
    assert mysoft[at + 1] == ("p", "The data is not transferred outside the EU/EEA.")
    assert "Privacy Shield" not in client.get("/munkeby/privacy").get_data(as_text=True)


def test_the_notice_says_when_its_version_took_effect_with_the_hash_as_the_link(app, client):
    notice = app.extensions["notices"]["munkeby"]
    with app.app_context():
        took_effect = db.session.get(NoticeVersion, ("munkeby", notice.version)).first_seen_at
    for lang, words in (("en", "In effect since "), ("sv", "Gäller sedan ")):
        page = client.get(f"/munkeby/privacy?lang={lang}").get_data(as_text=True)
        day = babel_dates.format_date(took_effect, format="long", locale=lang)
        assert f"{words}{day}." in page
        link = re.search(r'<a href="([^"]+)" title="([0-9a-f]{64})"><code>([0-9a-f]{12})</code></a>', page)
        assert link is not None
        assert link.group(1) == f"/munkeby/privacy/{notice.version}?lang={lang}"
        assert link.group(2) == notice.version and link.group(3) == notice.version[:12]
        linked = client.get(html.unescape(link.group(1))).get_data(as_text=True)
        assert f"{words}{day}." in linked and "earlier version" not in linked


def test_before_its_version_is_recorded_the_notice_shows_no_date_and_still_its_hash(app, client):
    # The row is written when a process starts with the notice; a page view never writes,
    # and shows no date that no record backs.
    notice = app.extensions["notices"]["mysoft"]
    with app.app_context():
        db.session.execute(delete(NoticeVersion).where(NoticeVersion.notice == "mysoft"))
        db.session.commit()
    page = client.get("/mysoft/privacy?lang=en")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "In effect since" not in body
    assert f'href="/mysoft/privacy/{notice.version}?lang=en"' in body
    assert "The data is not transferred outside the EU/EEA." in body


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("## Controller\n", "##Controller\n", "text.en.body: line 4: a heading is written as '## ' and its words"),
        ("## Controller\n", "# Controller\n", "text.en.body: line 4: a heading is written as '## ' and its words"),
        ("## Controller\n", "## \n", "text.en.body: line 4: a heading is written as '## ' and its words"),
        ("## Controller\n", "## Controller\n## Who we are\n", "text.en.body: the heading 'Controller' has no text"),
        ("Stockholm.\n\"\"\"", "Stockholm.\n\n## Cookies\n\"\"\"", "text.en.body: the heading 'Cookies' has no text"),
    ],
)
def test_a_heading_the_page_could_not_show_is_refused(tmp_path, old, new, message):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    english = source.index("[text.en]")
    assert old in source[english:]
    path = tmp_path / "mysoft.toml"
    path.write_text(source[:english] + source[english:].replace(old, new, 1), encoding="utf-8")
    with pytest.raises(NoticeError, match=re.escape(message)):
        parse_notice(path, {})


# --- a statement about transfers is made only by a notice that makes it --------------------


def test_only_a_notice_that_says_transfers_is_empty_claims_no_transfer(tmp_path):
    shipped = parse_notice(NOTICES / "mysoft.toml", {})
    assert shipped.transfers_stated and shipped.transfers == ()
    path = tmp_path / "mysoft.toml"
    path.write_text(without_transfers_statement((NOTICES / "mysoft.toml").read_text(encoding="utf-8")), "utf-8")
    silent = parse_notice(path, {})
    assert not silent.transfers_stated and silent.transfers == ()
    # Saying nothing is not saying "none": the two are different versions of what a person was told.
    assert "transfers" not in silent.shown and silent.version != shipped.version


def notices_without_the_transfers_statement(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for source in NOTICES.glob("*.toml"):
        text = source.read_text(encoding="utf-8")
        (folder / source.name).write_text(
            without_transfers_statement(text) if source.stem == "mysoft" else text, encoding="utf-8"
        )
    return folder


def test_a_notice_that_states_nothing_about_transfers_is_not_made_to_claim_anything(app_env, app, tmp_path):
    # The page, the manage page, the export and the Art. 14 mail leave transfers out rather
    # than say "not transferred outside the EU/EEA" for a controller that never said so.
    from .support import Mailbox, link_in, subscribe_and_confirm, text_body
    from .test_subscriber_pages import download

    env = {**app_env, "NOTICES_DIR": str(notices_without_the_transfers_statement(tmp_path / "silent"))}
    silent = create_app(env=env)
    try:
        client, runner = silent.test_client(), silent.test_cli_runner()
        mailbox = Mailbox(Path(silent.config["MAIL_DIR"]))
        for lang in ("en", "sv"):
            page = client.get(f"/mysoft/privacy?lang={lang}").get_data(as_text=True)
            assert "EU/EEA" not in page and "EU/EES" not in page and 'id="transfers"' not in page
        # Munkeby, which lists its transfers, still says them.
        assert "Data Privacy Framework" in client.get("/munkeby/privacy?lang=en").get_data(as_text=True)

        manage = link_in(subscribe_and_confirm(client, mailbox, "mysoft", "ada@firma.se"), "manage")
        card = client.get(manage + "?lang=en").get_data(as_text=True)
        assert "data-transfers" not in card and "Outside the EU/EEA" not in card
        document = download(client, mailbox, manage, "ada@firma.se", query="?lang=en")
        [sub] = document["subscriptions"]
        assert "transfers" not in sub and "transfers_text" not in sub

        imported = runner.invoke(
            args=["contacts", "import", "-", "--notice", "mysoft", "--source", "https://www.bolag.se/kontakt"],
            input="email\nbo@bolag.se\n",
        )
        assert imported.exit_code == 0, imported.output
        assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
        art14 = mailbox.last("bo@bolag.se")
        assert art14["Subject"] and "Mysoft AB" in text_body(art14)  # the Art. 14 mail, in Swedish
        for part in (art14.get_body(("plain",)), art14.get_body(("html",))):
            assert part is not None and "EU/EE" not in part.get_content()
    finally:
        with silent.app_context():
            db.session.remove()
            db.engine.dispose()


# --- the website paragraph tells the truth about cookies ---------------------------------


def test_mysofts_notice_says_its_page_sets_no_cookie(client):
    for lang, truth in (("sv", "Den här sidan sätter inga kakor."), ("en", "This page sets no cookies.")):
        page = client.get(f"/mysoft/privacy?lang={lang}")
        body = " ".join(html.unescape(page.get_data(as_text=True)).split())
        assert truth in body
        assert "skyddar formuläret" not in body and "protects the form" not in body
        assert "Set-Cookie" not in page.headers
