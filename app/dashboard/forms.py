"""Dashboard forms; every one carries a CSRF token (Flask-WTF)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Length


class LoginForm(FlaskForm):
    email = EmailField(validators=[DataRequired(), Length(max=254)])
    password = PasswordField(validators=[DataRequired(), Length(max=1024)])


class ActionForm(FlaskForm):
    """A button that changes something: only its CSRF token matters."""


class RectifyForm(FlaskForm):
    name = StringField(validators=[Length(max=200)])
    email = EmailField(validators=[Length(max=254)])


class TokenForm(FlaskForm):
    """The scopes are checkboxes read with ``request.form.getlist``."""

    name = StringField(validators=[DataRequired(), Length(max=100)])
