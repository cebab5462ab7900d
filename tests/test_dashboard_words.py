"""The marketers' screens read as words: the chart with its axes, legend and table, counts that
tell subscribers from contacts, sync problems as sentences, events and facts named, the
certificate's check, and the import page's answers. Asserted as a marketer reads the pages.

Strings added with these pages are asserted in English (``?lang=en``) until their Swedish
lands in the catalogue; numbers, dates and percentages come from the locale's own data, so
their Swedish forms are asserted now.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from app.extensions import db
from app.models import ContactImport, OutboxJob, Subscription, utcnow

from .support import link_in, subscribe_and_confirm
from .test_art14 import evidence_kept_since, imported_by_older_code
from .test_dashboard import create_user, form_token, log_in, subscription_ref
from .test_dashboard_import import upload


@pytest.fixture
def marketer(app, client, runner):  # type: ignore[no-untyped-def]
    create_user(runner, "maria@munkeby.se", "marketer")
    assert log_in(client, "maria@munkeby.se").status_code == 302
    return client


def text_of(page: str) -> str:
    """What a reader sees: tags dropped, entities decoded, white space folded."""
    plain = html.unescape(re.sub(r"<[^>]+>", " ", page))
    return re.sub(r"\s+", " ", plain.replace("\xa0", " ").replace("\u202f", " "))


def section(page: str, slug: str) -> str:
    start = page.index(f'id="n-{slug}"')
    end = page.find("<section", start)
    return page[start : end if end != -1 else len(page)]


def figure(page: str, name: str) -> str:
    match = re.search(rf'data-figure="{name}"[^>]*>(.*?)<', page, re.DOTALL)
    assert match, f"no {name} on the page"
    return html.unescape(match.group(1)).replace("\xa0", " ").strip()


def test_the_chart_has_axes_a_legend_and_its_figures_as_a_table(app, client, mailbox, marketer):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    subscribe_and_confirm(client, mailbox, "munkeby", "bo@example.com")
    english = section(marketer.get("/dashboard/?lang=en").get_data(as_text=True), "munkeby")
    svg = english.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert 'role="img"' in svg and "http" not in svg
    assert svg.count('class="line series-') == 3
    assert ">Day<" in svg and ">Events per day<" in svg  # the axes' titles
    assert re.search(r">\s*0\s*<", svg) and re.search(r">\s*2\s*<", svg)  # the y axis's scale
    legend = text_of(english.split('class="legend"', 1)[1].split("</ul>", 1)[0])
    assert "sign-ups: 2" in legend and "confirmations: 2" in legend and "opt-outs: 0" in legend
    table = english.split('<table class="chart-table">', 1)[1].split("</table>", 1)[0]
    assert "<caption>Sign-ups, confirmations and opt-outs per day" in table
    assert table.count('<th scope="col"') == 4 and table.count('<th scope="row">') == 31  # 30 days and the total
    assert re.search(r"Total</th>\s*<td[^>]*>2</td>\s*<td[^>]*>2</td>\s*<td[^>]*>0</td>", table)
    assert figure(english, "confirmation-rate") == "100.0%"
    assert figure(english, "opt-out-rule") == "stop mailing and keep the contact as unsubscribed"

    swedish = section(marketer.get("/dashboard/?lang=sv").get_data(as_text=True), "munkeby")
    assert figure(swedish, "confirmation-rate") == "100,0 %"  # the locale's own form
    assert "stop_mailing" not in swedish and ">unsubscribe<" not in swedish  # the rule is not shown as its code


def test_the_chart_colours_keep_three_to_one_contrast(app):
    """The legend's colours against the white page, and each against its neighbour in the legend."""
    css = (Path(app.static_folder) / "dashboard.css").read_text()
    colours = [re.search(rf"\.series-{n} {{ stroke: (#[0-9a-f]{{6}})", css).group(1) for n in (1, 2, 3)]

    def luminance(hex_colour: str) -> float:
        channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    def contrast(a: str, b: str) -> float:
        high, low = sorted([luminance(a), luminance(b)], reverse=True)
        return (high + 0.05) / (low + 0.05)

    assert all(contrast(colour, "#ffffff") >= 3 for colour in colours)
    assert contrast(colours[0], colours[1]) >= 3 and contrast(colours[1], colours[2]) >= 3


def test_imported_prospects_are_counted_apart_from_subscribers(app, client, mailbox, marketer, runner, tmp_path):
    subscribe_and_confirm(client, mailbox, "mysoft", "anna@example.com")
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("email\nper@firma.se\nlisa@firma.se\n")
    imported = runner.invoke(
        args=["contacts", "import", str(contacts), "--notice", "mysoft", "--basis", "legitimate_interest",
              "--source", "https://www.firma.se/kontakt"]
    )
    assert imported.exit_code == 0, imported.output
    for lang in ("en", "sv"):
        mysoft = section(marketer.get(f"/dashboard/?lang={lang}").get_data(as_text=True), "mysoft")
        assert figure(mysoft, "subscribed") == "1"  # the one who consented, not the two imported
        assert figure(mysoft, "legitimate-interest") == "2"
    listed = marketer.get("/dashboard/subscribers?notice=mysoft&lang=en").get_data(as_text=True)
    rows = text_of(listed.split("<tbody>", 1)[1])
    assert rows.count("contact on legitimate interest") == 2 and rows.count(" subscribed ") == 1


def test_sync_problems_are_sentences_a_marketer_can_act_on(app, client, mailbox, marketer, runner):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0  # no credentials: the syncs wait
    with app.app_context():
        apsis_job = db.session.execute(
            select(OutboxJob.id).where(OutboxJob.notice == "mysoft", OutboxJob.kind == "sync_consent")
        ).scalar_one()
        mail_job = db.session.execute(select(OutboxJob.id).where(OutboxJob.kind == "mail")).scalars().first()
        stored = {  # as app.outbox.describe stores them
            apsis_job: "ProviderRetry: APSIS 401 on token Unauthorized",
            mail_job: "PermanentMailError: recipient refused (550) for anna@example.com",
        }
        for job_id, reason in stored.items():
            db.session.execute(update(OutboxJob).where(OutboxJob.id == job_id).values(state="dead", last_error=reason))
        db.session.commit()
    english = marketer.get("/dashboard/?lang=en").get_data(as_text=True)
    sync = text_of(english.split('id="sync"', 1)[1])
    assert "Munkeby Systems: Mailchimp is not set up: add MAILCHIMP_API_KEY (1 job waits)" in sync
    assert "APSIS refused the credentials: check APSIS_CLIENT_ID and APSIS_CLIENT_SECRET" in sync
    assert "The mail server refused the recipient's address" in sync
    assert "subscription to the mail provider" in sync and "mail to a subscriber" in sync  # the jobs' kinds
    for code in ("ProviderRetry", "PermanentMailError", "WaitForConfiguration", "Unauthorized", "550", "sync_"):
        assert code not in sync, code
    assert "anna@example.com" not in sync  # a failure's text may name the person: never shown
    swedish = marketer.get("/dashboard/?lang=sv").get_data(as_text=True)
    assert "WaitForConfiguration" not in swedish and "ProviderRetry" not in swedish


def test_the_subject_page_names_events_and_facts_in_words(app, client, mailbox, marketer):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg")
    ref = subscription_ref(app, "anna@example.com")
    for lang in ("en", "sv"):
        page = marketer.get(f"/dashboard/subscribers/{ref}?lang={lang}").get_data(as_text=True)
        shown = text_of(page)
        for raw in ("['email', 'name']", "True", "False", "None", "signup_requested", "consent_confirmed", "{"):
            assert raw not in shown, (lang, raw)
    english = text_of(marketer.get(f"/dashboard/subscribers/{ref}?lang=en").get_data(as_text=True))
    assert "Signed up on the form" in english and "Consent confirmed" in english
    assert "data collected: e-mail address and name" in english
    assert "consent box ticked: yes" in english
    assert "lawful basis: consent" in english
    assert "through web page" in english  # the channel, in words


def test_a_data_request_is_named_by_what_the_person_asked_for(app, client, mailbox, marketer):
    welcome = subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    manage = link_in(welcome, "manage")
    client.post(manage + "/request", data={"kind": "export"})
    client.post(manage + "/request", data={"kind": "erase"})
    ref = subscription_ref(app, "anna@example.com")
    english = text_of(marketer.get(f"/dashboard/subscribers/{ref}?lang=en").get_data(as_text=True))
    assert "kind: a copy of the data" in english and "kind: erasure" in english
    swedish = text_of(marketer.get(f"/dashboard/subscribers/{ref}?lang=sv").get_data(as_text=True))
    assert "en kopia av uppgifterna" in swedish and "radering" in swedish
    assert "export" not in swedish.replace("Exportera", "")


def test_the_certificate_prints_links_back_and_states_the_chain_check(app, client, mailbox, marketer):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com", "Anna Berg")
    ref = subscription_ref(app, "anna@example.com")
    answer = marketer.get(f"/dashboard/subscribers/{ref}/certificate?lang=en")
    page = answer.get_data(as_text=True)
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
    assert re.search(r'<script src="/static/print\.js" defer></script>', page) and "<script>" not in page
    assert re.search(r"<button type=\"button\" data-print hidden>Print</button>", page)
    script = marketer.get("/static/print.js")
    assert script.status_code == 200 and b"window.print()" in script.data
    script.close()
    assert f'href="/dashboard/subscribers/{ref}" data-figure="back"' in page
    assert re.match(r"Generated .*20\d\d.* UTC$", figure(page, "generated"))
    chain = text_of(page.split('data-figure="chain">', 1)[1].split("</p>", 1)[0]).strip()
    rows = page.count("<tr data-event=")
    assert rows >= 2 and chain.startswith("Chain check: all")
    assert f"All {rows} events on this certificate are among them" in chain
    assert page.count('class="verified">verified<') == rows
    shown = text_of(page)
    assert "Signed up on the form" in shown and "signup_requested" not in shown and "True" not in shown

    with app.app_context():  # tamper with the evidence; the certificate must say so, event by event
        from app.models import ConsentEvent

        db.session.execute(
            ConsentEvent.__table__.update().where(ConsentEvent.type == "consent_confirmed").values(channel="forged")
        )
        db.session.commit()
    page = marketer.get(f"/dashboard/subscribers/{ref}/certificate?lang=en").get_data(as_text=True)
    chain = text_of(page.split('data-figure="chain">', 1)[1].split("</p>", 1)[0]).strip()
    assert chain.startswith("Chain check FAILED at event") and "cannot vouch" in chain
    assert 'class="unverified">not verified<' in page


def test_an_import_left_waiting_says_no_worker_runs_and_how_to_start_one(app, marketer):
    answer = upload(marketer, b"E-post\nada@firma.se\n")
    status_url = answer.headers["Location"]
    token = form_token(marketer.get(status_url).get_data(as_text=True))
    marketer.post(status_url, data={"csrf_token": token, "email_column": "E-post", "mode": "dry-run"})
    fresh = marketer.get(status_url + "?lang=en").get_data(as_text=True)
    assert 'data-figure="no-worker"' not in fresh  # just queued: the worker may be about to take it
    with app.app_context():  # as if queued a while ago, with no worker to claim it
        db.session.execute(update(OutboxJob).values(created_at=utcnow() - timedelta(seconds=30)))
        db.session.commit()
    waiting = marketer.get(status_url + "?lang=en")
    assert waiting.headers["Refresh"] == "2"
    said = text_of(waiting.get_data(as_text=True).split('data-figure="no-worker"', 1)[1].split("</div>", 1)[0])
    assert "No worker has taken this import in 30 seconds" in said
    assert "flask --app wsgi outbox run" in said


def test_a_name_column_for_a_notice_without_names_is_refused_with_the_reason(app, marketer, runner):
    answer = upload(marketer, b"Namn;E-post\nAda Berg;ada@firma.se\n", notice="mysoft")
    status_url = answer.headers["Location"]
    page = marketer.get(status_url + "?lang=en").get_data(as_text=True)
    assert 'id="name_column"' not in page and "does not collect names" in page  # not offered
    refused = marketer.post(
        status_url + "?lang=en",
        data={"csrf_token": form_token(page), "email_column": "E-post", "name_column": "Namn", "mode": "import"},
    )
    assert refused.status_code == 400
    said = text_of(refused.get_data(as_text=True))
    assert "Mysoft AB newsletter does not collect names, so the column Namn cannot be imported" in said
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Subscription)).scalar_one() == 0
        assert db.session.execute(select(ContactImport.state)).scalar_one() == "uploaded"


def test_the_subscribers_list_names_each_notice(app, client, mailbox, marketer):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    for lang, names in (
        ("sv", {"Munkeby Systems nyhetsbrev", "Mysoft AB:s nyhetsbrev"}),
        ("en", {"Munkeby Systems newsletter", "Mysoft AB newsletter"}),
    ):
        page = marketer.get(f"/dashboard/subscribers?lang={lang}").get_data(as_text=True)
        assert set(re.findall(r'<td data-figure="notice">([^<]+)</td>', page)) == names
        assert "<td>munkeby</td>" not in page and "<td>mysoft</td>" not in page


def test_imported_contacts_not_informed_after_25_days_are_listed_for_their_controller(
    app, client, marketer, runner, tmp_path
):
    evidence_kept_since(app, days=60)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("email\nwaiting@bolag.se\nrecent@bolag.se\n")
    imported = runner.invoke(
        args=["contacts", "import", str(contacts), "--notice", "mysoft", "--basis", "legitimate_interest",
              "--source", "https://www.bolag.se/om-oss"]
    )
    assert imported.exit_code == 0, imported.output  # no worker has run: nobody is informed yet
    with app.app_context():
        for address, days in (("waiting@bolag.se", 26), ("recent@bolag.se", 10)):
            db.session.execute(
                update(Subscription)
                .where(Subscription.email == address)
                .values(confirmed_at=utcnow() - timedelta(days=days))
            )
        db.session.commit()
    page = marketer.get("/dashboard/?lang=en").get_data(as_text=True)
    listed = page.split('id="art14"', 1)[1].split("</section>", 1)[0]
    ref = subscription_ref(app, "waiting@bolag.se")
    assert f'<a href="/dashboard/subscribers/{ref}">waiting@bolag.se</a>' in listed
    assert "recent@bolag.se" not in listed and figure(listed, "days-since") == "26"
    assert "Mysoft AB newsletter" in listed

    create_user(runner, "mats@munkeby.se", "viewer", notices=("munkeby",))
    other = app.test_client()
    assert log_in(other, "mats@munkeby.se").status_code == 302
    assert 'id="art14"' not in other.get("/dashboard/").get_data(as_text=True)  # another controller's people


def test_contacts_imported_before_art14_mails_were_recorded_are_not_called_uninformed(app, marketer, runner):
    evidence_kept_since(app, days=30)
    imported = runner.invoke(
        args=["contacts", "import", "-", "--notice", "mysoft", "--source", "https://www.bolag.se/om-oss"],
        input="email\nold@bolag.se\nolder@bolag.se\n",
    )
    assert imported.exit_code == 0, imported.output
    imported_by_older_code(app, "old@bolag.se", 40)  # mailed by the older code, which recorded nothing
    imported_by_older_code(app, "older@bolag.se", 200)
    page = marketer.get("/dashboard/?lang=en").get_data(as_text=True)
    card = page.split('id="art14"', 1)[1].split("</section>", 1)[0]
    assert "old@bolag.se" not in card and "older@bolag.se" not in card and "Not yet informed" not in card
    assert figure(card, "art14-unknown") == (
        "2 contacts were imported before this service recorded Art. 14 mails: whether they were informed is"
        " not known here; check the mail server's log."
    )
    assert "not yet informed" not in text_of(card.split("</h2>", 1)[0]).lower()


def test_an_upload_of_contacts_obtained_over_a_month_ago_warns_of_art14(app, marketer):
    marketer.get("/dashboard/?lang=en")  # the dashboard remembers the language chosen
    today = utcnow().date()
    stale = (today - timedelta(days=40)).isoformat()
    answer = upload(marketer, b"E-post\nada@firma.se\n", source_date=stale)
    warned = text_of(marketer.get(answer.headers["Location"]).get_data(as_text=True))
    assert f"The contacts were obtained on {stale}, more than one month ago" in warned
    # Nothing is imported or mailed yet: the warning says what to do, not what is happening.
    assert "Inform them as soon as they are imported" in warned and "goes out now" not in warned
    answer = upload(marketer, b"E-post\nbo@firma.se\n", source_date=today.isoformat())
    assert "more than one month ago" not in marketer.get(answer.headers["Location"]).get_data(as_text=True)
