"""The evidence certificate says what it proves: a consent, or a contact added on legitimate interest."""

from __future__ import annotations

from .support import subscribe_and_confirm
from .test_dashboard import create_user, log_in, subscription_ref


def test_a_contact_added_on_legitimate_interest_gets_an_evidence_certificate_not_a_consent_one(
    app, client, mailbox, runner, tmp_path
):
    create_user(runner, "maria@mysoft.se", "viewer", notices=("mysoft",))
    subscribe_and_confirm(client, mailbox, "mysoft", "anna@example.com")
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("email\nper@firma.se\n")
    imported = runner.invoke(
        args=["contacts", "import", str(contacts), "--notice", "mysoft", "--basis", "legitimate_interest",
              "--source", "https://www.firma.se/kontakt"]
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output
    assert log_in(client, "maria@mysoft.se").status_code == 302

    for address, title, version in (
        ("anna@example.com", "Consent certificate", "Notice version consented to"),
        ("per@firma.se", "Evidence certificate", "Notice version in force when added"),
    ):
        ref = subscription_ref(app, address)
        subject = client.get(f"/dashboard/subscribers/{ref}?lang=en").get_data(as_text=True)
        assert f">{title}</a>" in subject
        page = client.get(f"/dashboard/subscribers/{ref}/certificate?lang=en").get_data(as_text=True)
        assert f"<h1>{title}</h1>" in page and f"<dt>{version}</dt>" in page
        if title == "Evidence certificate":
            assert "Consent certificate" not in page and "consented" not in page
