"""Dashboard forms; every one carries a CSRF token (Flask-WTF)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import DateField, EmailField, PasswordField, StringField
from wtforms.validators import AnyOf, DataRequired, Length, Optional

from ..vocabulary import Relationship, Role, values


class LoginForm(FlaskForm):
    email = EmailField(validators=[DataRequired(), Length(max=254)])
    password = PasswordField(validators=[DataRequired(), Length(max=1024)])


class ActionForm(FlaskForm):
    """A button that changes something: only its CSRF token matters."""


class RectifyForm(FlaskForm):
    name = StringField(validators=[Length(max=200)])
    email = EmailField(validators=[Length(max=254)])


class UserForm(FlaskForm):
    """The notices are checkboxes read with ``request.form.getlist``."""

    email = EmailField(validators=[DataRequired(), Length(max=254)])
    role = StringField(validators=[DataRequired(), AnyOf(values(Role))])
    password = PasswordField(validators=[DataRequired(), Length(max=1024)])


class TokenForm(FlaskForm):
    """The scopes are checkboxes read with ``request.form.getlist``."""

    name = StringField(validators=[DataRequired(), Length(max=100)])


class ContactForm(FlaskForm):
    """A dialog with the contact on a day, and/or their relationship (retention facts)."""

    last_contact = DateField(validators=[Optional()])
    relationship = StringField(validators=[Optional(), AnyOf(values(Relationship))])


class ImportForm(FlaskForm):
    """Step one of an import: the file and the facts every imported contact carries."""

    notice = StringField(validators=[DataRequired(), Length(max=32)])
    lawful_basis = StringField(validators=[DataRequired(), Length(max=32)])
    source = StringField(validators=[DataRequired(), Length(max=400)])
    source_date = DateField(validators=[DataRequired()])
    proof = StringField(validators=[Length(max=400)])


class MappingForm(FlaskForm):
    email_column = StringField(validators=[DataRequired(), Length(max=200)])
    name_column = StringField(validators=[Length(max=200)])
    last_contact_column = StringField(validators=[Length(max=200)])
    relationship_column = StringField(validators=[Length(max=200)])
    added_column = StringField(validators=[Length(max=200)])
