"""Extension objects, created unbound and attached in ``create_app``."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from flask import request
from flask_babel import Babel
from flask_limiter import Limiter
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData, Table
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    __table__: ClassVar[Table]  # every model here is mapped to one table (declarative types it as any FromClause)

    # Named constraints keep Alembic migrations deterministic on every backend.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def client_ip() -> str:
    """The client address, after ProxyFix has applied the trusted proxy count."""
    return request.remote_addr or "unknown"


db = SQLAlchemy(model_class=Base)

# The base of the stored models. At run time Flask-SQLAlchemy's ``db.Model`` (the
# declarative ``Base`` plus its table naming and session binding); to the type checker,
# which cannot see a class made at run time, the ``Base`` it derives from.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
migrate = Migrate()
# The dashboard's forms (their token lives in its session). Public routes are exempt: they
# set no cookie, so the sign-up form carries a signed token of its own (app/tokens.py).
csrf = CSRFProtect()
limiter = Limiter(key_func=client_ip)
babel = Babel()
login_manager = LoginManager()
