"""The deployment files in deploy/, checked by the tools that will read them, and run.

- the systemd units pass ``systemd-analyze verify`` (with their paths pointed at this
  checkout), and a broken copy does not;
- the nginx site passes ``nginx -t``, then serves for real in front of gunicorn: a one-click
  POST goes through, a body over 1 MB is refused by nginx, the request id reaches the app,
  and nginx's access log holds no token;
- compose.yaml parses, names every service with a health check, and holds no secret;
- gunicorn runs with deploy/gunicorn.conf.py against PostgreSQL and Redis on this machine:
  one proxy hop is trusted for the client address (rate limits count the forwarded client,
  a hop added by the client is not believed), stderr is the service's JSON, no access line
  carries a path, and SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from .support import REPO, SmtpSink, free_port

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").iterdir())

pytestmark = pytest.mark.e2e


def _units_here(folder: Path) -> list[Path]:
    """The units with /opt/consent (where an operator installs) pointed at this checkout."""
    copies = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/consent/.venv", str(Path(sys.executable).parent.parent))
        text = text.replace("WorkingDirectory=/opt/consent", f"WorkingDirectory={REPO}")
        copy = folder / unit.name
        copy.write_text(text)
        copies.append(copy)
    return copies


@pytest.fixture
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed; the units are not verified here")
    return tool


def test_the_systemd_units_verify(systemd_analyze: str, tmp_path: Path):
    assert {u.name for u in UNITS} >= {
        "consent-web.service", "consent-worker.service", "consent-poller.service", "consent-poller.timer",
        "consent-purge.timer", "consent-verify.timer",
    }
    result = subprocess.run([systemd_analyze, "verify", *map(str, _units_here(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_a_broken_unit_does_not_verify(systemd_analyze: str, tmp_path: Path):
    [web] = [u for u in _units_here(tmp_path) if u.name == "consent-web.service"]
    web.write_text(web.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    result = subprocess.run([systemd_analyze, "verify", str(web)], capture_output=True, text=True, timeout=60)
    assert "restart specifier" in result.stderr  # the check reads the units, so the pass above means something


def test_the_worker_drains_on_sigterm_and_restarts_on_failure():
    worker = (DEPLOY / "systemd" / "consent-worker.service").read_text()
    assert "KillSignal=SIGTERM" in worker and "Restart=on-failure" in worker
    stop = int(re.search(r"TimeoutStopSec=(\d+)", worker).group(1))
    assert stop > 2 * 10  # longer than two provider calls at PROVIDER_TIMEOUT_SECONDS
    for unit in UNITS:
        if unit.suffix == ".service":
            assert "PROMETHEUS_MULTIPROC_DIR=/run/consent/metrics" in unit.read_text(), unit.name


def test_compose_names_every_part_with_health_checks_and_no_secret_inline():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"web", "worker", "poller", "postgres", "redis"}
    for name, service in services.items():
        assert "healthcheck" in service, name
        for dependency in (service.get("depends_on") or {}).values():
            assert dependency["condition"] == "service_healthy", name
    for name in ("web", "worker", "poller"):
        environment = services[name]["environment"]
        assert services[name]["env_file"] == "consent.env"
        assert not {"SECRET_KEY", "SUPPRESSION_PEPPER", "MAILCHIMP_API_KEY", "APSIS_CLIENT_SECRET"} & set(environment)
        assert environment["PROMETHEUS_MULTIPROC_DIR"] == "/run/consent/metrics"
    assert services["worker"]["command"][-2:] == ["outbox", "run"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "USER consent" in dockerfile and "HEALTHCHECK" in dockerfile and "deploy/gunicorn.conf.py" in dockerfile


# --- gunicorn with the deployment's config, on PostgreSQL and Redis ------------------------


@pytest.fixture
def deployed_env(app, app_env: dict[str, str], redis_url: str, tmp_path: Path) -> dict[str, str]:
    port = free_port()
    return {
        **app_env,
        "RATELIMIT_STORAGE_URL": redis_url,
        "SUBSCRIBE_RATE_LIMIT": "2 per hour",
        "LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "CONSENT_BIND": f"127.0.0.1:{port}",
        "CONSENT_WORKERS": "2",
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
    }


class Gunicorn:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.url = "http://" + env["CONSENT_BIND"]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py"), "wsgi:app"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log.read_text()
            try:
                if requests.get(self.url + "/healthz", timeout=10).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.2)
        pytest.fail("gunicorn did not answer:\n" + log.read_text())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9


@pytest.fixture
def gunicorn(deployed_env: dict[str, str], tmp_path: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(deployed_env, tmp_path / "gunicorn-deploy.log")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_gunicorn_with_the_deploy_config_trusts_one_proxy_hop(gunicorn: Gunicorn, tmp_path: Path):
    def sign_up_from(forwarded_for: str) -> int:
        response = requests.post(gunicorn.url + "/munkeby/subscribe", data={"email": "x"},
                                 headers={"X-Forwarded-For": forwarded_for}, timeout=10)
        return response.status_code

    # Two sign-up POSTs an hour per client: the third from the same client is refused...
    assert [sign_up_from("198.51.100.7") for _ in range(3)][-1] == 429
    # ...while another client behind the same proxy is not,
    assert sign_up_from("198.51.100.8") != 429
    # and a client cannot pass as someone new by adding a hop of its own in front.
    assert sign_up_from("203.0.113.1, 198.51.100.7") == 429
    assert gunicorn.stop() == 0  # SIGTERM: the workers finish and gunicorn exits cleanly
    lines = [line for line in gunicorn.log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is the service's JSON
    assert any(r["logger"] == "gunicorn.error" for r in records)
    finished = [r for r in records if r["message"].startswith("request finished")]
    assert {r["route"] for r in finished} >= {"/<slug>/subscribe", "/healthz"} - {"/healthz"}
    assert "198.51.100.7" not in gunicorn.log.read_text()  # neither path nor client address
    assert (tmp_path / "metrics").is_dir() and list((tmp_path / "metrics").glob("*.db"))


# --- nginx in front --------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for news.example.org and 127.0.0.1 from a test authority (``ca.pem``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issued(subject: str, key, issuer: x509.Name, signer, ca: bool) -> x509.Certificate:  # type: ignore[no-untyped-def]
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("news.example.org"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test authority")])
    ca = issued("test authority", ca_key, ca_name, ca_key, ca=True)
    cert = issued("news.example.org", key, ca_name, ca_key, ca=False)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _nginx_config(folder: Path, app_port: int) -> tuple[Path, int, Path]:
    """The site as shipped, with its ports, certificate and log paths moved into ``folder``."""
    cert, key = _self_signed(folder)
    https_port, http_port = free_port(), free_port()
    access_log = folder / "access.log"
    site = (DEPLOY / "nginx" / "consent.conf").read_text()
    site = site.replace("listen [::]:80;", "").replace("listen [::]:443 ssl http2;", "")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    site = site.replace("/etc/letsencrypt/live/news.example.org/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/news.example.org/privkey.pem", str(key))
    site = site.replace("/var/log/nginx/consent.access.log", str(access_log))
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{app_port};")
    (folder / "consent.conf").write_text(site)
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / name).mkdir()
    main = folder / "nginx.conf"
    main.write_text(f"""
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/consent.conf;
}}
""")
    return main, https_port, access_log


@pytest.fixture
def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx); the site is not checked here")
    return binary


def test_the_nginx_site_passes_nginx_t(nginx_binary: str, tmp_path: Path):
    main, _port, _log = _nginx_config(tmp_path, free_port())
    result = subprocess.run([nginx_binary, "-t", "-c", str(main)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_behind_nginx_one_click_works_and_the_access_log_holds_no_token(
    nginx_binary: str, app, app_env: dict[str, str], tmp_path: Path
):
    smtp = SmtpSink()
    smtp.start()
    app_port = free_port()
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    main, https_port, access_log = _nginx_config(nginx_dir, app_port)
    base = f"https://127.0.0.1:{https_port}"
    env = {**app_env, "CONSENT_BIND": f"127.0.0.1:{app_port}", "CONSENT_WORKERS": "2", "LOG_FORMAT": "json",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "PUBLIC_URL": "https://news.example.org",
           "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port)}
    server = Gunicorn(env, tmp_path / "gunicorn-nginx.log")
    nginx = subprocess.Popen([nginx_binary, "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace the authority below
        session.verify = str(nginx_dir / "ca.pem")  # the test's own authority
        session.headers["Host"] = "news.example.org"
        deadline = time.monotonic() + 20
        while True:
            try:
                page = session.get(base + "/munkeby/subscribe", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.2)
        assert page.status_code == 200
        assert re.fullmatch(r"[0-9a-f]{32}", page.headers["X-Request-ID"])  # nginx's $request_id, kept by the app
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)
        signed_up = session.post(base + "/munkeby/subscribe", allow_redirects=False, timeout=10, data={
            "csrf_token": token, "email": "behind.nginx@example.org", "consent": "y",
        }, headers={"Origin": "https://news.example.org", "Sec-Fetch-Site": "same-origin"})
        assert signed_up.status_code == 303, signed_up.text
        [confirmation] = smtp.wait_for("behind.nginx@example.org", 1)
        confirm_path = re.search(r"https://news\.example\.org(/confirm/[A-Za-z0-9._~-]+)",
                                 confirmation.get_body(("plain",)).get_content()).group(1)
        assert session.post(base + confirm_path, timeout=10).status_code in (200, 303)
        [_, welcome] = smtp.wait_for("behind.nginx@example.org", 2)
        unsubscribe = re.fullmatch(r"<https://news\.example\.org(/unsubscribe/[^>]+)>", welcome["List-Unsubscribe"])
        one_click = requests.post(base + unsubscribe.group(1), data={"List-Unsubscribe": "One-Click"},
                                  verify=str(nginx_dir / "ca.pem"),
                                  headers={"Host": "news.example.org"}, allow_redirects=False, timeout=10)
        assert one_click.status_code == 200  # the app's answer, through nginx, not a redirect
        too_big = session.post(base + "/munkeby/subscribe", data=b"x" * (2 * 1024 * 1024), timeout=10)
        assert too_big.status_code == 413 and "nginx" in too_big.text  # refused by nginx before the app
        assert session.get(base + "/metrics", timeout=5).status_code == 404
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=20)
        server.stop()
        smtp.stop()
    logged = access_log.read_text()
    assert logged.count("\n") >= 6
    secret_parts = [unsubscribe.group(1).rsplit("/", 1)[1], confirm_path.rsplit("/", 1)[1], "behind.nginx", "127.0.0.1"]
    assert not [part for part in secret_parts if part in logged], logged
