"""Credentials out of every URL the platform records (raw rows, metadata, logs, reports)."""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"

# A query parameter (`?password=`) or JDBC driver property (`;password=`) whose name says secret.
_SECRET_PARAM = re.compile(
    r"(?i)([?&;][^=&;?#]*(?:password|passwd|pwd|secret|token|key)[^=&;?#]*=)[^&;#]*"
)


def redact_url(url: str) -> str:
    """`url` with every password masked, whatever form the URL takes.

    Covers userinfo (`scheme://user:password@host`, also behind `jdbc:`), query parameters
    (`?password=...`) and driver properties (`;password=...`). User names stay: they say whose
    credentials were used without granting anything. Text that is not a URL comes back as is.
    """
    prefix = "jdbc:" if url.startswith("jdbc:") else ""
    head, sep, properties = url[len(prefix) :].partition(";")
    try:
        parsed = make_url(head)
        if "@" in (parsed.host or ""):  # an unencoded '@' in the password: parse was a guess
            raise ArgumentError(head)
        head = parsed.render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        head = _mask_userinfo(head)
    return _SECRET_PARAM.sub(rf"\g<1>{MASK}", prefix + head + sep + properties)


def _mask_userinfo(text: str) -> str:
    """Everything before the last '@' of the authority, for URLs SQLAlchemy cannot parse.

    Oracle's `oracle:thin:user/password@//host` has no `//` before the credentials, so the
    masked part then starts after the last ':' instead.
    """
    at = text.rfind("@")
    scheme_end = text.find("://", 0, at)
    start = scheme_end + 3 if scheme_end >= 0 else text.rfind(":", 0, at) + 1
    if at < 0 or start == 0:  # no '@', or a plain path such as /home/ann@corp/data.csv
        return text
    return text[:start] + MASK + text[at:]


def redact_message(text: str, url: str, password: str | None = None) -> str:
    """`text` (a driver's error message) with `url` redacted and its secrets masked anywhere.

    Drivers may echo the URL, a host string with the userinfo, or the password verbatim.
    """
    text = text.replace(url, redact_url(url))
    for secret in (password, *_url_secrets(url)):
        if secret:
            text = text.replace(secret, MASK)
    return text


def _url_secrets(url: str) -> list[str]:
    """The secret values inside `url`: the userinfo password and secret-named parameters."""
    values = [m.group(0).split("=", 1)[1] for m in _SECRET_PARAM.finditer(url)]
    try:
        values.append(make_url(url.removeprefix("jdbc:").partition(";")[0]).password or "")
    except (ArgumentError, ValueError):
        pass
    return [str(v) for v in values if v]
