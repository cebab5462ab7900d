"""gunicorn's entry for bench/http_routes.py: the service's own app, plus one trivial route.

The trivial route runs through everything the app does for every request (its hooks,
security headers, the server) and nothing else: the ceiling the other routes are measured
against, served side by side by the same processes.
"""

from wsgi import app

app.add_url_rule("/bench/ok", "bench_ok", lambda: "ok")
