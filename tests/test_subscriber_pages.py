"""What a subscriber reads on their own pages, in the export and in the data mails.

Swedish all the way (codes in words, dates in the reader's form), wording that fits
the person (a contact added on legitimate interest never reads of a consent it never
gave), every controller a data link covers named in its mail, and a used link that
says so. Read through HTTP as the person's browser gets it.
"""

from __future__ import annotations

import json
import re
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import ConsentEvent, DataRequest

from .support import link_in, subscribe_and_confirm, text_body

PROSPECT_SOURCE = "https://www.firma.se/om-oss/kontakta-oss/medarbetare-och-kontaktpersoner-inom-foretaget"


def main_text(page: str) -> str:
    """The words of the page's main part, as a reader sees them (no markup, no header or footer)."""
    found = re.search(r"<main[^>]*>(.*)</main>", page, re.DOTALL)
    assert found, "no <main> on the page"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1)))


def html_body(message: EmailMessage) -> str:
    return message.get_body(("html",)).get_content()  # type: ignore[union-attr]


def import_prospect(runner, mailbox, address: str, relationship: str = "prospect") -> EmailMessage:  # type: ignore[no-untyped-def]
    """A harvested B2B contact imported for Mysoft on legitimate interest; returns its Art. 14 mail."""
    result = runner.invoke(
        args=[
            "contacts", "import", "-", "--notice", "mysoft", "--basis", "legitimate_interest",
            "--source", PROSPECT_SOURCE, "--source-date", "2026-11-20",
            "--email-column", "email", "--relationship-column", "kind",
        ],
        input=f"email;kind\n{address};{relationship}\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0  # the Art. 14 mail
    return mailbox.last(address)


def request_data_link(client, mailbox, manage: str, kind: str, address: str) -> EmailMessage:  # type: ignore[no-untyped-def]
    assert client.post(manage + "/request", data={"kind": kind}).status_code == 303
    return mailbox.last(address)


def count(app, kind: str) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.execute(
            select(func.count()).select_from(ConsentEvent).where(ConsentEvent.type == kind)
        ).scalar_one()


# --- Swedish all the way -------------------------------------------------------------------


def test_the_manage_page_shows_codes_as_words_and_dates_as_a_reader_writes_them(client, mailbox):
    manage = link_in(subscribe_and_confirm(client, mailbox, "munkeby", "stina@firma.se", "Stina"), "manage")
    english = main_text(client.get(manage + "?lang=en").get_data(as_text=True))
    assert "Munkeby Systems newsletter" in english
    assert "subscribed" in english and "Swedish" in english and "consent" in english
    assert "the sign-up form at https://news.example.org/munkeby/subscribe" in english
    assert "The privacy notice you agreed to" in english
    # A date as the reader writes it ("Dec 2, 2026"), never the stored ISO form.
    assert re.search(r"Consent given [A-Z][a-z]{2} \d{1,2}, \d{4}", english)
    assert not re.search(r"\d{4}-\d{2}-\d{2}", english)

    swedish = client.get(manage, headers={"Accept-Language": "sv-SE,sv;q=0.9"}).get_data(as_text=True)
    words = main_text(swedish)
    assert 'lang="sv"' in swedish
    assert "Munkeby Systems nyhetsbrev" in words and "prenumererar" in words and "svenska" in words
    assert "Integritetsinformationen du godkände" in words
    assert re.search(r"\d{1,2} (jan|feb|mars|apr|maj|juni|juli|aug|sep|okt|nov|dec)\.? \d{4}", words)
    assert not re.search(r"\d{4}-\d{2}-\d{2}", words)
    for code in ("subscribed", "legitimate_interest", "sign-up form http"):
        assert code not in words


def test_after_the_catalogue_merge_every_word_on_the_manage_page_is_swedish(client, mailbox, runner):
    manage = link_in(subscribe_and_confirm(client, mailbox, "munkeby", "sven@firma.se", "Sven"), "manage")
    words = main_text(client.get(manage + "?lang=sv").get_data(as_text=True))
    assert "samtycke" in words and "Samtycke lämnat" in words
    assert "anmälningsformuläret på https://news.example.org/munkeby/subscribe" in words
    prospect = link_in(import_prospect(runner, mailbox, "lead.sv@firma.se"), "manage")
    words = main_text(client.get(prospect + "?lang=sv").get_data(as_text=True))
    assert "får nyhetsbrevet" in words and "Tillagd" in words and "Tillagda" not in words
    assert "importerad från " + PROSPECT_SOURCE in words
    assert "Integritetsinformationen som gällde när din adress lades till" in words
    assert "imported" not in words and "receives" not in words
    # The transfers sentence (labels.transfer, whose Swedish comes with the notices' catalogue entries).
    munkeby = client.get(manage + "?lang=sv").get_data(as_text=True)
    assert "USA" in re.search(r"<dd data-transfers>(.*?)</dd>", munkeby).group(1)  # type: ignore[union-attr]


# --- wording that fits the person ----------------------------------------------------------


@pytest.mark.parametrize("relationship", ["prospect", "customer"])
def test_a_contact_added_on_legitimate_interest_never_reads_of_consent(client, mailbox, runner, relationship):
    address = f"{relationship}@firma.se"
    manage = link_in(import_prospect(runner, mailbox, address, relationship), "manage")
    page = main_text(client.get(manage + "?lang=en").get_data(as_text=True))
    assert "legitimate interest" in page and "You may object at any time" in page
    assert "The privacy notice in force when your address was added" in page
    assert "receives the newsletter" in page and re.search(r"Added on [A-Z][a-z]{2} \d{1,2}, \d{4}", page)
    assert f'data-relationship="{relationship}"' in client.get(manage).get_data(as_text=True)
    assert "consent" not in page.lower() and "agreed" not in page
    swedish = main_text(client.get(manage + "?lang=sv").get_data(as_text=True))
    assert "samtyck" not in swedish.lower() and "godkände" not in swedish and "berättigat intresse" in swedish

    # The copy's page and the erasure's answer and last mail speak of no consent either.
    export = link_in(request_data_link(client, mailbox, manage, "export", address), "manage/data")
    assert "consent" not in main_text(client.get(export + "?lang=en").get_data(as_text=True)).lower()
    erase = link_in(request_data_link(client, mailbox, manage, "erase", address), "manage/data")
    erased = main_text(client.post(erase + "?lang=en").get_data(as_text=True))
    assert "Your data has been erased" in erased and "Mysoft AB" in erased
    assert "consent" not in erased.lower() and "a record of what was done that names no one" in erased
    last = mailbox.last(address)
    assert "consent" not in text_body(last).lower() and "samtyck" not in text_body(last).lower()


def test_someone_who_consented_is_told_the_evidence_of_it_is_kept(client, mailbox):
    manage = link_in(subscribe_and_confirm(client, mailbox, "munkeby", "kerstin@firma.se", "Kerstin"), "manage")
    erase = link_in(request_data_link(client, mailbox, manage, "erase", "kerstin@firma.se"), "manage/data")
    erased = main_text(client.post(erase + "?lang=en").get_data(as_text=True))
    assert "evidence of your consent and its withdrawal" in erased
    last = mailbox.last("kerstin@firma.se")
    # The last mail goes out in the person's language (Swedish, as signed up).
    assert "bevis om ditt samtycke och återkallandet" in re.sub(r"\s+", " ", text_body(last))


def test_the_export_and_erase_mails_name_every_controller_the_link_covers(client, mailbox):
    subscribe_and_confirm(client, mailbox, "munkeby", "olle@firma.se", "Olle")
    welcome = subscribe_and_confirm(client, mailbox, "mysoft", "olle@firma.se")
    manage = link_in(welcome, "manage")  # a Mysoft mail: the link's own notice is Mysoft's
    for kind in ("export", "erase"):
        message = request_data_link(client, mailbox, manage, kind, "olle@firma.se")
        for part in (message["Subject"], text_body(message), html_body(message)):
            assert "Munkeby Systems" in part and "Mysoft AB" in part, (kind, part)
        assert "Munkeby Systems och Mysoft AB" in message["Subject"]  # a list in the mail's language

    # One controller only: the mail names just that one.
    manage_one = link_in(subscribe_and_confirm(client, mailbox, "munkeby", "per@firma.se", "Per"), "manage")
    message = request_data_link(client, mailbox, manage_one, "export", "per@firma.se")
    assert "Munkeby Systems" in message["Subject"] and "Mysoft" not in text_body(message)


def test_a_used_data_link_opened_again_says_so_offers_no_button_and_changes_nothing(app, client, mailbox):
    manage = link_in(subscribe_and_confirm(client, mailbox, "munkeby", "rut@firma.se", "Rut"), "manage")
    link = link_in(request_data_link(client, mailbox, manage, "export", "rut@firma.se"), "manage/data")
    fresh = client.get(link + "?lang=en").get_data(as_text=True)
    assert "<button" in fresh and "Download my data" in fresh
    assert client.post(link).status_code == 200

    exported = count(app, "subject_exported")
    with app.app_context():
        used_at = db.session.execute(select(DataRequest.used_at)).scalar_one()
    for _ in range(3):
        again = client.get(link + "?lang=en")
        body = again.get_data(as_text=True)
        assert again.status_code == 410
        assert "This link has already been used" in body
        assert "<button" not in body and "<form" not in body
    assert "Länken har redan använts" in client.get(link + "?lang=sv").get_data(as_text=True)
    assert count(app, "subject_exported") == exported
    with app.app_context():
        assert db.session.execute(select(DataRequest.used_at)).scalar_one() == used_at


# --- the export in the page's language -----------------------------------------------------


def download(client, mailbox, manage: str, address: str, **request) -> dict:  # type: ignore[no-untyped-def,type-arg]
    link = link_in(request_data_link(client, mailbox, manage, "export", address), "manage/data")
    answer = client.post(link + request.pop("query", ""), **request)
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    return json.loads(answer.get_data(as_text=True))


def test_the_export_keeps_its_codes_and_adds_words_in_the_language_of_the_page(client, mailbox, runner):
    manage = link_in(subscribe_and_confirm(client, mailbox, "munkeby", "ulla@firma.se", "Ulla"), "manage")

    english = download(client, mailbox, manage, "ulla@firma.se", query="?lang=en")
    [sub] = english["subscriptions"]
    assert english["language"] == "en"
    # The codes scripts read stay as the design fixes them.
    assert sub["status"] == "subscribed" and sub["lawful_basis"] == "consent" and sub["relationship"] == "subscriber"
    assert sub["source"].startswith("sign-up form ")
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:\d{2})", e["at"]) for e in english["events"])
    # Beside them, the words.
    assert sub["status_text"] == "subscribed" and sub["lawful_basis_text"] == "consent"
    assert sub["source_text"].startswith("the sign-up form at ") and sub["language_text"] == "Swedish"
    assert sub["notice_title"] == "Munkeby Systems newsletter"
    assert sub["retention"]["summary"] == "kept while you subscribe"
    assert "withdraw it at any time" in english["rights"] and "object" not in english["rights"]
    assert english["events"][0]["type"] == "signup_requested" and english["events"][0]["type_text"]

    swedish = download(client, mailbox, manage, "ulla@firma.se", headers={"Accept-Language": "sv"})
    [sub] = swedish["subscriptions"]
    assert swedish["language"] == "sv"
    assert sub["status"] == "subscribed" and sub["status_text"] == "prenumererar"
    assert sub["notice_title"] == "Munkeby Systems nyhetsbrev" and sub["language_text"] == "svenska"
    assert sub["retention"]["summary"] != "kept while you subscribe"  # the summary in Swedish
    assert [e["type"] for e in swedish["events"]][:3] == ["signup_requested", "confirmation_sent", "consent_confirmed"]


def test_after_the_catalogue_merge_the_swedish_export_has_no_english_prose(client, mailbox):
    manage = link_in(subscribe_and_confirm(client, mailbox, "munkeby", "vera@firma.se", "Vera"), "manage")
    swedish = download(client, mailbox, manage, "vera@firma.se", query="?lang=sv")
    [sub] = swedish["subscriptions"]
    assert sub["lawful_basis_text"] == "samtycke" and sub["source_text"].startswith("anmälningsformuläret på ")
    assert swedish["rights"].startswith("Du får se dina uppgifter")
    assert sub["recipients"][0]["role"].startswith("personuppgiftsbiträde")
    assert "Integritetsskyddsmyndigheten" in swedish["complaints"] and "complain" not in swedish["complaints"]


def test_the_export_of_a_prospect_names_the_right_to_object(client, mailbox, runner):
    manage = link_in(import_prospect(runner, mailbox, "tor@firma.se"), "manage")
    document = download(client, mailbox, manage, "tor@firma.se", query="?lang=en")
    [sub] = document["subscriptions"]
    assert sub["lawful_basis"] == "legitimate_interest" and sub["lawful_basis_text"] == "legitimate interest"
    assert sub["relationship_text"] == "prospect"
    assert sub["source_text"] == f"imported from {PROSPECT_SOURCE}, collected Nov 20, 2026"
    assert "object at any time" in document["rights"] and "consent" not in document["rights"]
    # Data portability (Art. 20) is a right on consent or contract, not on legitimate interest.
    assert "elsewhere" not in document["rights"]
    assert document["rights"].startswith("You may see your data and have it corrected or erased")


def test_the_export_offers_to_take_the_data_elsewhere_only_with_a_subscription_on_consent(client, mailbox, runner):
    manage = link_in(subscribe_and_confirm(client, mailbox, "munkeby", "ulla@firma.se", "Ulla"), "manage")
    consented = download(client, mailbox, manage, "ulla@firma.se", query="?lang=en")
    assert "take it elsewhere" in consented["rights"]
    # The same person also imported by Mysoft as a prospect: the consent still counts.
    import_prospect(runner, mailbox, "ulla@firma.se")
    both = download(client, mailbox, manage, "ulla@firma.se", query="?lang=en")
    assert {s["lawful_basis"] for s in both["subscriptions"]} == {"consent", "legitimate_interest"}
    assert "take it elsewhere" in both["rights"] and "object at any time" in both["rights"]


def test_the_command_line_export_keeps_its_shape(client, mailbox, runner):
    subscribe_and_confirm(client, mailbox, "munkeby", "cli@firma.se", "Cli")
    result = runner.invoke(args=["subjects", "export", "cli@firma.se"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    [sub] = document["subscriptions"]
    assert sub["status"] == "subscribed" and "status_text" not in sub and "language" not in document
    assert document["rights"].startswith("You may access")


# --- transfers outside the EU/EEA ----------------------------------------------------------


def test_each_notice_card_and_the_export_state_the_transfers_outside_the_eu(client, mailbox):
    subscribe_and_confirm(client, mailbox, "munkeby", "ada@firma.se", "Ada")
    munkeby = link_in(mailbox.last("ada@firma.se"), "manage")
    mysoft = link_in(subscribe_and_confirm(client, mailbox, "mysoft", "ada@firma.se"), "manage")

    card = re.search(r"<dd data-transfers>(.*?)</dd>", client.get(munkeby + "?lang=en").get_data(as_text=True))
    assert card and "United States" in card.group(1) and "Data Privacy Framework" in card.group(1)
    none = re.search(r"<dd data-transfers>(.*?)</dd>", client.get(mysoft + "?lang=en").get_data(as_text=True))
    assert none and none.group(1) == "The data is not transferred outside the EU/EEA."

    document = download(client, mailbox, mysoft, "ada@firma.se", query="?lang=en")
    by_notice = {s["notice"]: s for s in document["subscriptions"]}
    [transfer] = by_notice["munkeby"]["transfers"]
    assert (transfer["country"], transfer["safeguard"], transfer["fallback"]) == ("US", "dpf", "scc")
    assert "United States" in transfer["text"] and transfer["text"] == by_notice["munkeby"]["transfers_text"]
    assert by_notice["mysoft"]["transfers"] == []
    assert by_notice["mysoft"]["transfers_text"] == "The data is not transferred outside the EU/EEA."
