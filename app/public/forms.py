from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, StringField
from wtforms.validators import DataRequired


class SubscribeForm(FlaskForm):
    class Meta:
        # Flask-WTF's CSRF token lives in the session, and a session is a cookie: the public
        # pages set none (the notices promise it). The form carries a signed token of its own
        # instead (``csrf_token`` below, app/tokens.py) and the route checks the Origin.
        csrf = False

        def get_translations(self, form: object) -> None:
            """No WTForms catalogue: every word this form shows is the service's own (``_l``
            here, the route's error texts). Flask-WTF would load and parse WTForms' catalogue
            on every request, for the labels of the hidden fields; that cost a sign-up more
            CPU than writing it to the database (bench/README.md)."""
            return None

    # Same name as Flask-WTF's field, so what fills in the form (people's browsers, scripts,
    # the tests) needs no change; the route fills in and checks the value.
    csrf_token = HiddenField()
    email = EmailField(_l("E-mail address"), render_kw={"autocomplete": "email", "maxlength": 254})
    name = StringField(_l("Name"), render_kw={"autocomplete": "name", "maxlength": 100})
    # Never pre-ticked: consent must be an active choice (GDPR Art. 4(11), 7).
    consent = BooleanField(
        default=False, validators=[DataRequired(message=_l("You need to tick the box to subscribe."))]
    )
    # Honeypot: hidden from people, filled in by naive bots.
    website = StringField(render_kw={"autocomplete": "off", "tabindex": "-1"})
