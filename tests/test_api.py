"""The CRM's API: tokens, consent status, sign-ups, opt-outs, evidence."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from app.addresses import MAX_EMAIL_LENGTH
from app.api.schemas import MAX_PAGE
from app.extensions import db
from app.models import Subscription
from app.notices import notices
from app.vocabulary import Language, LawfulBasis, OptOutRule, Relationship, Status, values

from .support import subscribe_and_confirm


def make_token(runner, *scopes: str, notices: tuple[str, ...] = ("munkeby", "mysoft")) -> dict[str, str]:  # type: ignore[no-untyped-def]
    args = ["tokens", "create", "Dynamics 365"]
    for scope in scopes:
        args += ["--scope", scope]
    for slug in notices:
        args += ["--notice", slug]
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    return {"Authorization": f"Bearer {json.loads(result.stdout)['token']}"}


@pytest.fixture
def crm(runner) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return make_token(runner, "read", "subscribe", "opt_out")


def test_the_openapi_document_is_public_and_everything_else_needs_a_token(client, runner):
    doc = client.get("/api/v1/openapi.json")
    assert doc.status_code == 200 and doc.json["openapi"].startswith("3.1")
    for method, path in (
        ("GET", "/api/v1/consent?email=a@example.com"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/opt-outs"),
        ("POST", "/api/v1/subscriptions"),
    ):
        answer = client.open(path, method=method, headers={"Authorization": "Bearer cst_not-a-real-token"})
        assert answer.status_code == 401 and answer.json["error"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_scopes_and_revocation_are_enforced(client, runner):
    reader = make_token(runner, "read")
    answer = client.post("/api/v1/opt-outs", json={"email": "a@example.com", "notice": "munkeby"}, headers=reader)
    assert answer.status_code == 403 and "opt_out" in answer.json["detail"]
    assert client.get("/api/v1/consent?email=a@example.com", headers=reader).status_code == 200
    token_id = json.loads(runner.invoke(args=["tokens", "list"]).stdout)[0]["id"]
    assert runner.invoke(args=["tokens", "revoke", str(token_id)]).exit_code == 0
    assert client.get("/api/v1/consent?email=a@example.com", headers=reader).status_code == 401


def test_consent_status_answers_per_controller(client, mailbox, crm):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    answer = client.get("/api/v1/consent", query_string={"email": "Anna@Example.com"}, headers=crm).json
    by_notice = {n["notice"]: n for n in answer["notices"]}
    assert by_notice["munkeby"]["may_email"] is True and by_notice["munkeby"]["lawful_basis"] == "consent"
    assert by_notice["munkeby"]["since"].endswith("Z") and len(by_notice["munkeby"]["notice_version"]) == 64
    assert by_notice["mysoft"] == {
        "notice": "mysoft",
        "controller": "Mysoft AB",
        "may_email": False,
        "status": "unknown",
        "lawful_basis": None,
        "since": None,
        "notice_version": None,
    }


def test_a_sign_up_through_the_api_starts_double_opt_in(client, mailbox, crm):
    answer = client.post(
        "/api/v1/subscriptions",
        json={"email": "new@example.com", "notice": "munkeby", "name": "Ny Person"},
        headers=crm,
    )
    assert answer.status_code == 202 and answer.json == {"status": "confirmation_requested"}
    assert "/confirm/" in mailbox.last("new@example.com").get_body(("plain",)).get_content()
    status = client.get("/api/v1/consent?email=new@example.com", headers=crm).json["notices"][0]
    assert status["status"] == "pending" and status["may_email"] is False


def test_an_opt_out_by_phone_applies_the_notice_rule(client, mailbox, runner, crm):
    subscribe_and_confirm(client, mailbox, "mysoft", "bo@example.com")
    answer = client.post("/api/v1/opt-outs", json={"email": "bo@example.com", "notice": "mysoft"}, headers=crm)
    assert answer.json == {"status": "opted_out", "rule": "delete"}
    assert runner.invoke(args=["subjects", "export", "bo@example.com"]).exit_code == 1
    again = client.post("/api/v1/opt-outs", json={"email": "bo@example.com", "notice": "mysoft"}, headers=crm)
    assert again.json == {"status": "already_opted_out", "rule": "delete"}
    status = client.get("/api/v1/consent?email=bo@example.com", headers=crm).json["notices"]
    assert {n["notice"]: n["status"] for n in status}["mysoft"] == "suppressed"


def test_events_page_by_key_and_show_details_only_for_one_person(client, mailbox, crm):
    subscribe_and_confirm(client, mailbox, "munkeby", "anna@example.com")
    subscribe_and_confirm(client, mailbox, "munkeby", "bo@example.com")
    # Event 1 is the token's own creation, which belongs to no notice: a token sees its notices' events.
    first = client.get("/api/v1/events?limit=2", headers=crm).json
    assert [e["seq"] for e in first["events"]] == [2, 3] and first["next_after"] == 3
    assert all("details" not in e for e in first["events"])
    rest = client.get(f"/api/v1/events?after={first['next_after']}&limit=500", headers=crm).json
    assert rest["next_after"] is None and rest["events"][0]["seq"] == 4
    anna = client.get("/api/v1/events?email=anna@example.com", headers=crm).json["events"]
    assert anna and all(e.get("details", {}).get("email", "anna@example.com") == "anna@example.com" for e in anna)
    assert any("details" in e for e in anna)


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/v1/subscriptions", "not json"),
        ("POST", "/api/v1/subscriptions", "[1, 2]"),
        ("POST", "/api/v1/subscriptions", '{"email": 5, "notice": "munkeby"}'),
        ("POST", "/api/v1/subscriptions", '{"email": "a@example.com", "notice": "nowhere"}'),
        ("POST", "/api/v1/subscriptions", '{"email": "a@example.com\\r\\nBcc: x@evil.example", "notice": "munkeby"}'),
        ("POST", "/api/v1/opt-outs", '{"email": "not an address", "notice": "mysoft"}'),
        ("POST", "/api/v1/opt-outs", "[" * 100000),
        ("GET", "/api/v1/events?limit=0", None),
        ("GET", "/api/v1/events?after=-1", None),
        ("GET", "/api/v1/events?after=%C2%B2", None),
        ("GET", "/api/v1/events?limit=9999999999999999999999", None),
        ("GET", "/api/v1/consent", None),
    ],
)
def test_bad_requests_get_clear_json_errors_and_change_nothing(client, runner, crm, method, path, body):
    before = client.get("/api/v1/events", headers=crm).json["events"]
    assert before == []
    answer = client.open(path, method=method, data=body, content_type="application/json", headers=crm)
    assert 400 <= answer.status_code < 500 and answer.json["detail"], answer.data
    assert client.get("/api/v1/events", headers=crm).json["events"] == before


def test_an_after_beyond_every_event_is_an_empty_page(client, crm):
    answer = client.get("/api/v1/events?after=999999999999999999", headers=crm)
    assert answer.status_code == 200 and answer.json == {"events": [], "next_after": None}


def test_a_dialog_and_a_relationship_are_recorded_for_a_held_contact(app, client, mailbox, runner):
    headers = make_token(runner, "contact")
    subscribe_and_confirm(client, mailbox, "munkeby", "kalle@firma.se", "Kalle")
    body = {"email": "Kalle@Firma.se", "notice": "munkeby", "last_contact_at": "2026-01-02T10:00:00+01:00"}
    answer = client.post("/api/v1/contacts", json=body, headers=headers)
    assert answer.status_code == 200
    assert answer.json == {"notice": "munkeby", "relationship": "subscriber", "last_contact_at": "2026-01-02T09:00:00Z"}
    answer = client.post(
        "/api/v1/contacts", json={"email": "kalle@firma.se", "notice": "munkeby", "relationship": "customer"},
        headers=headers,
    )
    assert answer.json["relationship"] == "customer" and answer.json["last_contact_at"] == "2026-01-02T09:00:00Z"
    events = client.get("/api/v1/events?limit=100", headers=make_token(runner, "read")).json["events"]
    assert [e["facts"] for e in events if e["type"] == "contact_recorded"] == [
        {"last_contact_at": "2026-01-02T09:00:00Z", "actor": "token:1"},
        {"relationship": "customer", "actor": "token:1"},
    ]


@pytest.mark.parametrize(
    "body, status",
    [
        ({"email": "nobody@firma.se", "notice": "munkeby", "relationship": "customer"}, 404),
        ({"email": "kalle@firma.se", "notice": "munkeby", "last_contact_at": "2999-01-01T00:00:00Z"}, 422),
        ({"email": "kalle@firma.se", "notice": "munkeby", "last_contact_at": "yesterday"}, 422),
        ({"email": "kalle@firma.se", "notice": "munkeby", "relationship": "friend"}, 422),
        ({"email": "kalle@firma.se", "notice": "munkeby"}, 422),
    ],
)
def test_bad_contact_records_are_refused_and_change_nothing(app, client, mailbox, runner, body, status):
    headers = make_token(runner, "contact")
    subscribe_and_confirm(client, mailbox, "munkeby", "kalle@firma.se", "Kalle")
    answer = client.post("/api/v1/contacts", json=body, headers=headers)
    assert answer.status_code == status and answer.json["status"] == status
    assert client.post("/api/v1/contacts", json=body, headers=make_token(runner, "read")).status_code == 403
    with app.app_context():
        sub = db.session.execute(select(Subscription)).scalar_one()
        assert sub.relationship == "subscriber" and sub.last_contact_at is None


def test_the_document_is_built_from_the_schemas_the_routes_validate_with(app, client):
    doc = client.get("/api/v1/openapi.json").json
    components = doc["components"]["schemas"]
    # Every route of the blueprint but the document itself is described, with its methods.
    routes = {
        (rule.rule, method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("api.") and rule.endpoint != "api.openapi"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routes == {(path, method) for path, item in doc["paths"].items() for method in item}
    # Each vocabulary is one component, with the words of app/vocabulary.py.
    for words in (Language, LawfulBasis, OptOutRule, Relationship, Status):
        assert components[words.__name__]["enum"] == list(values(words))
    with app.app_context():
        slugs = sorted(notices())
    body = components["SubscriptionRequest"]["properties"]
    assert body["notice"]["enum"] == slugs and body["email"]["maxLength"] == MAX_EMAIL_LENGTH
    assert body["lang"]["$ref"] == "#/components/schemas/Language"
    events = {p["name"]: p["schema"] for p in doc["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert events["limit"]["maximum"] == MAX_PAGE and events["notice"]["enum"] == slugs
    for item in doc["paths"].values():
        for operation in item.values():
            for code, answer in operation["responses"].items():
                if int(code) >= 400:
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_a_notice_outside_the_token_is_answered_as_an_unknown_one(client, runner):
    headers = make_token(runner, "opt_out", notices=("munkeby",))
    answers = [
        client.post("/api/v1/opt-outs", json={"email": "a@example.com", "notice": slug}, headers=headers)
        for slug in ("mysoft", "nowhere")
    ]
    expected = {"error": "invalid_field", "detail": "notice must be one of: munkeby", "status": 422}
    assert [answer.json for answer in answers] == [expected, expected]


@pytest.mark.parametrize(
    "body, detail",
    [
        ({"notice": "munkeby"}, "email is required"),
        ({"notice": "munkeby", "email": None}, "email is required"),
        ({"notice": "munkeby", "email": 5}, "email must be a string"),
        ({"notice": "munkeby", "email": "not an address"}, "email is not a valid e-mail address"),
        ({"email": "a@example.com"}, "notice is required"),
        ({"notice": ["munkeby"], "email": "a@example.com"}, "notice must be a string"),
        ({"notice": "munkeby", "email": "a@example.com", "lang": "de"}, "lang must be 'sv' or 'en'"),
        ({"notice": "munkeby", "email": "a@example.com", "name": 5}, "name must be a string"),
    ],
)
def test_each_broken_rule_is_named_in_the_detail(client, runner, body, detail):
    answer = client.post("/api/v1/subscriptions", json=body, headers=make_token(runner, "subscribe"))
    assert answer.status_code == 422 and answer.json == {"error": "invalid_field", "detail": detail, "status": 422}
