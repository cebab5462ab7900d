"""The privacy notice page: the notice as shown now, and each earlier version by its hash.

Every page says when its version began to be shown: the ``NoticeVersion`` row's
``first_seen_at``, written when a process first starts with that notice file
(``app.schema.record_notice_versions``). A GET never writes, so until that row
exists (the schema was missing at start-up, or the database cannot be read) the
current page shows no date rather than one no record backs; the hash alone still
names the version exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flask import abort, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import format_date
from sqlalchemy.exc import SQLAlchemyError

from .. import consent
from ..extensions import db
from ..i18n import current_language
from ..models import NoticeVersion
from ..notices import Notice, Transfer, blocks_of
from . import bp
from .routes import _notice_or_404

log = logging.getLogger(__name__)


@bp.get("/<slug>/privacy")
@bp.get("/<slug>/privacy/<version>")
def privacy(slug: str, version: str | None = None) -> ResponseReturnValue:
    """The notice as shown now, or any earlier version by its hash (``?version=`` or in the path)."""
    notice = _notice_or_404(slug)
    version = version or request.args.get("version")
    lang = current_language(notice)
    if not version or version == notice.version:
        return _page(notice, notice.version, notice.shown, lang, since=_first_shown(notice))
    if not consent.HASH_RE.match(version):
        abort(404)
    stored = db.session.get(NoticeVersion, (notice.slug, version))
    content = stored.content if stored is not None and isinstance(stored.content, dict) else None
    if stored is None or content is None or not isinstance(content.get("text"), dict) or not content["text"]:
        abort(404)
    return _page(notice, version, content, lang, since=stored.first_seen_at, earlier=True)


def _page(
    notice: Notice,
    version: str,
    content: Mapping[str, Any],
    lang: str,
    *,
    since: datetime | None,
    earlier: bool = False,
) -> ResponseReturnValue:
    texts = content["text"]
    text = texts.get(lang) or next(iter(texts.values()))
    if not isinstance(text, Mapping):  # a stored version this code cannot read
        abort(404)
    return render_template(
        "public/privacy.html",
        notice=notice,
        text=text,
        blocks=blocks_of(str(text.get("body", "")), content.get("text_format")),
        transfers=_transfers(content),
        version=version,
        since=format_date(since, format="long") if since is not None else None,
        earlier=earlier,
    )


def _transfers(content: Mapping[str, Any]) -> tuple[Transfer, ...] | None:
    """The transfers a version states; None for a version stored before notices stated them
    (it said nothing about them as data, so the page does not speak for it)."""
    stated = content.get("transfers")
    if not isinstance(stated, list):
        return None
    return tuple(Transfer.from_stored(table) for table in stated if isinstance(table, Mapping))


def _first_shown(notice: Notice) -> datetime | None:
    """When the current version was first shown, if recorded. The notice itself never
    depends on the database: without it the page is shown without the date."""
    try:
        found = db.session.get(NoticeVersion, (notice.slug, notice.version))
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("the date of notice %s version %s could not be read", notice.slug, notice.version[:12])
        return None
    return found.first_seen_at if found is not None else None
