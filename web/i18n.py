"""Languages: zh-CN first, English second; gettext catalogs compiled by Babel."""

from __future__ import annotations

import gettext
from functools import cache
from pathlib import Path

from starlette.requests import HTTPConnection

LOCALE_DIR = Path(__file__).with_name("locale")
LANGUAGES = ("zh_CN", "en")
DEFAULT = "zh_CN"
LANG_COOKIE = "vdi_lang"


@cache
def translations(lang: str) -> gettext.NullTranslations:
    return gettext.translation("messages", localedir=LOCALE_DIR, languages=[lang],
                               fallback=True)


def pick_language(conn: HTTPConnection) -> str:
    """?lang= wins, then the cookie, then the browser's Accept-Language, then zh_CN."""
    for candidate in (conn.query_params.get("lang"), conn.cookies.get(LANG_COOKIE)):
        if candidate in LANGUAGES:
            return candidate
    header = conn.headers.get("accept-language", "")
    ranked: list[tuple[float, str]] = []
    for part in header.split(","):
        tag, _, q = part.strip().partition(";q=")
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            continue
        tag = tag.strip().lower()
        if tag.startswith("zh"):
            ranked.append((weight, "zh_CN"))
        elif tag.startswith("en"):
            ranked.append((weight, "en"))
    if ranked:
        return max(ranked, key=lambda r: r[0])[1]
    return DEFAULT


def gettext_for(conn: HTTPConnection) -> gettext.NullTranslations:
    return translations(pick_language(conn))
