"""The privacy notice page: the notice as shown now, and each earlier version by its hash."""

from __future__ import annotations

from flask import abort, render_template, request
from flask.typing import ResponseReturnValue

from .. import consent
from ..extensions import db
from ..i18n import current_language
from ..models import NoticeVersion
from . import bp
from .routes import _notice_or_404


@bp.get("/<slug>/privacy")
@bp.get("/<slug>/privacy/<version>")
def privacy(slug: str, version: str | None = None) -> ResponseReturnValue:
    """The notice as shown now, or any earlier version by its hash (``?version=`` or in the path)."""
    notice = _notice_or_404(slug)
    version = version or request.args.get("version")
    lang = current_language(notice)
    if not version or version == notice.version:
        return render_template("public/privacy.html", notice=notice, text=notice.text(lang), version=notice.version)
    if not consent.HASH_RE.match(version):
        abort(404)
    stored = db.session.get(NoticeVersion, (notice.slug, version))
    texts = stored.content.get("text") if stored is not None and isinstance(stored.content, dict) else None
    if stored is None or not isinstance(texts, dict) or not texts:
        abort(404)
    text = texts.get(lang) or next(iter(texts.values()))
    return render_template(
        "public/privacy.html", notice=notice, text=text, version=version, earlier=stored.first_seen_at
    )
