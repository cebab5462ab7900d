"""Gunicorn settings for the consent service behind one reverse proxy (deploy/nginx/consent.conf).

    gunicorn -c deploy/gunicorn.conf.py wsgi:app

Every value can be changed from the environment without editing this file; the names are
given beside each setting.
"""

import multiprocessing
import os
import re
from pathlib import Path

# Loopback only: nginx in front terminates TLS and is the one client. CONSENT_BIND to change.
bind = os.environ.get("CONSENT_BIND", "127.0.0.1:8000")

# Sync workers: each request is a short database transaction and the mail goes out after the
# response from a thread of its own. Two per core plus one keeps the cores busy while some
# workers wait on the database. CONSENT_WORKERS to change.
workers = int(os.environ.get("CONSENT_WORKERS", multiprocessing.cpu_count() * 2 + 1))

# No request of this service takes long: a page is milliseconds, an upload of the 200 MB
# import limit over a slow line is spooled by nginx first. A worker stuck for 30 s is killed.
timeout = 30
# On SIGTERM (systemd stop, a deploy) a worker finishes its request and the mail it has to
# send after it; longer than one SMTP exchange with its timeouts.
graceful_timeout = 30
# nginx keeps connections to the upstream open (keepalive in the upstream block).
keepalive = 5
# Heartbeat files on a memory file system: a worker is not declared dead because /tmp's disk is slow.
if os.path.isdir("/dev/shm"):  # noqa: S108  (only gunicorn's own heartbeat files, mode 600)
    worker_tmp_dir = "/dev/shm"  # noqa: S108
# gunicorn's control socket would live in the service user's home; nothing uses it here.
control_socket_disable = True

# Forwarded headers: gunicorn trusts no one (so X-Forwarded-Proto from a client is never
# taken as the scheme), and the app's ProxyFix takes exactly one hop, nginx's, from
# X-Forwarded-For and X-Forwarded-Proto. The client address decides rate limits and /metrics.
forwarded_allow_ips = ""
os.environ.setdefault("TRUSTED_PROXY_COUNT", "1")

# Logs: gunicorn's own lines in the service's format (LOG_FORMAT=json for one object a line).
# No access log: a request line holds the path, and paths carry link tokens and webhook
# secrets. The app logs one "request finished" line per request with the route template,
# status, duration and the request id nginx sends as X-Request-ID.
accesslog = None
errorlog = "-"
# The module lives in the application's folder, where gunicorn is started.
from app.logs import gunicorn_logconfig  # noqa: E402

logconfig_dict = gunicorn_logconfig(os.environ.get("LOG_FORMAT"))

# Prometheus multiprocess mode: every worker, the outbox worker and the timers write their
# counters as files in one folder and /metrics adds them up. prometheus_client reads the
# variable when it is first imported, so it is set here, before the app is loaded. Default:
# systemd's RuntimeDirectory (consent-web.service), else "metrics" in the instance folder.
_default_metrics = os.environ.get("RUNTIME_DIRECTORY") or os.path.join(os.environ.get("INSTANCE_PATH", "instance"),
                                                                       "metrics")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _default_metrics)
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
_PID = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def on_starting(server):
    """Start with the folder made, and without the files of processes that are gone.

    The outbox worker on this host writes into the same folder and keeps running across a
    restart of the web service: its files stay. Files of dead processes would otherwise add
    their live gauges forever; their counters are kept by Prometheus from earlier scrapes.
    """
    METRICS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in METRICS_DIR.glob("*.db"):
        match = _PID.search(path.name)
        if match and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)


def child_exit(server, worker):
    """A worker that exits takes its live gauges with it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
