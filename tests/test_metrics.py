"""/metrics: what an operator's Prometheus reads, from the addresses allowed to read it.

In the test process the counters are this process's own (no ``PROMETHEUS_MULTIPROC_DIR``),
so each test compares a counter before and after; the multiprocess figures are tested under
gunicorn with several workers and a CLI process writing to one directory.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import time_machine
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.extensions import db
from app.models import OutboxJob, utcnow

from .fakes.mailchimp import FakeMailchimp
from .support import REPO, free_port, provider_env, run_flask, serving, subscribe_and_confirm, unsubscribe_path

HOOK_SECRET = "metrics-hook-" + "k" * 24


def scrape(client) -> dict[tuple[str, tuple], float]:  # type: ignore[no-untyped-def,type-arg]
    """Every sample, as (name, sorted labels) -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def app_env(app_env: dict[str, str], mailchimp: FakeMailchimp) -> dict[str, str]:
    return {**app_env, **provider_env(mailchimp=mailchimp), "MAILCHIMP_WEBHOOK_SECRET": HOOK_SECRET}


def test_only_allowed_addresses_may_read_it_and_others_get_a_plain_404(client):
    assert client.get("/metrics").status_code == 200
    refused = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    unknown = client.get("/no-such-page", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert refused.status_code == unknown.status_code == 404
    assert "consent_" not in refused.get_data(as_text=True)


def test_behind_one_proxy_the_forwarded_client_is_the_one_checked(app_env):
    from app import create_app

    app = create_app(env={**app_env, "TRUSTED_PROXY_COUNT": "1", "METRICS_ALLOW": "10.0.0.0/8"})
    client = app.test_client()
    # The proxy on loopback forwards an outside client: refused, though the proxy itself is local.
    assert client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 404
    assert client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 200
    # A client cannot add a hop of its own to pass as an allowed address.
    spoofed = client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3, 203.0.113.9"})
    assert spoofed.status_code == 404
    with app.app_context():
        db.engine.dispose()


def test_requests_are_counted_by_route_template_never_by_path(client, mailbox):
    before = scrape(client)
    mail = subscribe_and_confirm(client, mailbox, "munkeby", "counted@example.com")
    client.get(unsubscribe_path(mail))
    after = scrape(client)
    key = {"route": "/unsubscribe/<token>", "method": "GET", "status": "200"}
    assert value(after, "consent_http_requests_total", **key) == value(before, "consent_http_requests_total", **key) + 1
    text = client.get("/metrics").get_data(as_text=True)
    assert unsubscribe_path(mail).rsplit("/", 1)[1] not in text and "counted@" not in text
    assert value(after, "consent_http_request_duration_seconds_count", route="/unsubscribe/<token>", method="GET") >= 1


def test_a_waiting_opt_out_shows_its_age_against_the_48_hour_promise(app, client, mailbox, runner):
    mail = subscribe_and_confirm(client, mailbox, "munkeby", "waiting@example.com")
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    client.post(unsubscribe_path(mail), data={"List-Unsubscribe": "One-Click"})
    with time_machine.travel(utcnow() + timedelta(hours=25), tick=False):
        samples = scrape(client)
    assert value(samples, "consent_outbox_jobs", kind="sync_optout", state="pending") == 1
    assert 25 * 3600 <= value(samples, "consent_optout_oldest_pending_age_seconds") < 25 * 3600 + 60
    assert value(samples, "consent_optout_promise_seconds") == 48 * 3600
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    assert value(scrape(client), "consent_optout_oldest_pending_age_seconds") == 0


def test_a_dead_letter_is_counted_by_kind(app, client):
    with app.app_context():
        db.session.add(OutboxJob(kind="sync_optout", notice="munkeby", payload={}, state="dead"))
        db.session.commit()
    samples = scrape(client)
    assert value(samples, "consent_outbox_dead_letters", kind="sync_optout") == 1
    assert value(samples, "consent_database_up") == 1


def test_a_provider_429_is_counted_and_the_call_retried(client, mailbox, runner, mailchimp):
    before = scrape(client)
    mailchimp.enqueue_failure(429, {"title": "Too Many Requests", "status": 429, "detail": "slow down"})
    subscribe_and_confirm(client, mailbox, "munkeby", "limited@example.com")
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    after = scrape(client)
    limited = "consent_provider_rate_limited_total"
    assert value(after, limited, provider="mailchimp") == value(before, limited, provider="mailchimp") + 1
    rate_limited = sum(v for (name, labels), v in after.items()
                       if name == "consent_provider_calls_total" and ("outcome", "rate_limited") in labels)
    assert rate_limited >= 1


def test_webhook_deliveries_are_counted_by_result(client):
    before = scrape(client)
    assert client.get(f"/webhooks/mailchimp/{HOOK_SECRET}").status_code == 200  # Mailchimp's URL check
    assert client.post(f"/webhooks/mailchimp/{HOOK_SECRET}", data={"type": "nonsense"}).status_code in (200, 400)
    assert client.post("/webhooks/mailchimp/" + "w" * 30, data={}).status_code == 404
    after = scrape(client)
    name = "consent_webhook_deliveries_total"
    ok = {"provider": "mailchimp", "result": "ok"}
    assert value(after, name, **ok) == value(before, name, **ok) + 1
    assert value(after, name, provider="mailchimp", result="http_404") >= 1
    assert HOOK_SECRET not in client.get("/metrics").get_data(as_text=True)


def test_the_chain_check_and_the_worker_heartbeat_are_there_once_they_ran(client, runner):
    samples = scrape(client)
    assert value(samples, "consent_ledger_verify_ok") == 0 and value(samples, "consent_worker_seen") == 0
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    samples = scrape(client)
    assert value(samples, "consent_ledger_verify_ok") == 1 and value(samples, "consent_worker_seen") == 1
    assert 0 <= value(samples, "consent_worker_heartbeat_age_seconds") < 60
    assert 0 <= value(samples, "consent_ledger_verify_age_seconds") < 60


def test_every_metric_an_alert_reads_is_exported(app, client, runner, mailbox):
    # Figures that exist only once their subject does: a chained event, a check, a worker pass.
    subscribe_and_confirm(client, mailbox, "munkeby", "alerted@example.com")
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0
    assert runner.invoke(args=["outbox", "run", "--once"]).exit_code == 0
    rules = yaml.safe_load((REPO / "deploy" / "alerts.yml").read_text())
    # Families, with or without samples now: a gauge of dead letters has none while there are none.
    text = client.get("/metrics").get_data(as_text=True)
    exported = {family.name for family in text_string_to_metric_families(text)}
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
            assert rule["labels"]["severity"] in ("warning", "critical")
            for name in re.findall(r"\bconsent_[a-z_]+", rule["expr"]):
                assert name.removesuffix("_total") in exported, f"{rule['alert']}: {name}"
    thresholds = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert "24 * 3600" in thresholds["OptOutWaiting24h"] and "40 * 3600" in thresholds["OptOutWaiting40h"]


@pytest.mark.e2e
def test_under_gunicorn_the_figures_are_whole_across_workers_and_include_the_cli(app, app_env, tmp_path: Path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {**app_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PUBLIC_URL": f"http://127.0.0.1:{port}"}
    with serving(env, port, tmp_path / "gunicorn-metrics.log", workers=3) as server:
        # Ten clients at once, a new connection for each request, in rounds of 30 until more than
        # one worker has answered (on a busy host one worker can win every accept of a round).
        sent, serving_pids = 0, set()
        with ThreadPoolExecutor(10) as pool:
            while len(serving_pids) < 2 and sent < 600:
                answers = list(pool.map(lambda _: requests.get(server.url + "/", timeout=10).status_code, range(30)))
                assert answers == [200] * 30
                sent += 30
                serving_pids = {p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}
        # A CLI process writes its own figures into the same folder.
        assert run_flask(env, "ledger", "verify").returncode == 0
        # Several scrapes, each on a new connection, so more than one worker answers them.
        scrapes = [requests.get(server.url + "/metrics", timeout=10).text for _ in range(6)]
    assert len(serving_pids) >= 2, "the requests were answered by one worker only: nothing was added up"
    for text in scrapes:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert value(samples, "consent_http_requests_total", route="/", method="GET", status="200") == sent
    assert value(samples, "consent_ledger_verify_ok") == 1
    # The chain check's progress, counted in the CLI's own process, read through the web's scrape.
    assert value(samples, "consent_task_done", task="verify") == value(samples, "consent_task_total", task="verify")
    assert ("consent_task_done", (("task", "verify"),)) in samples
