"""What the platform may record: no credentials, no customer ids, no terminal tricks.

Credentials come out of every URL it records (raw rows, metadata, logs, reports); customer ids
in the ops log are keyed pseudonyms; quoted values leave error messages; control characters are
escaped. The pseudonym key lives with the state, readable by the service user only:

    secrets/pseudonym.key       0600  HMAC key generated once when CHURN_PSEUDONYM_KEY is unset;
                                      back it up with the state or pseudonyms stop matching
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import tempfile
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from churn_platform.core.ops.files import ensure_dir

if TYPE_CHECKING:  # config imports this module for redact_url; settings may come to import config
    from churn_platform.settings import Settings

MASK = "***"
_UNSAFE_CHARS_RE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_QUOTED_LITERAL_RE = re.compile(r"(?<!\w)'[^'\n]*'(?!\w)")

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


def sanitize(text: object, max_length: int = 2000) -> str:
    """Escape control, line-separator and bidi characters and cap the length.

    Why: a newline, ANSI escape or U+2028 in a message (often from an exception raised on bad
    input) could fake extra records or rewrite what an operator's terminal shows.
    """
    escaped = _UNSAFE_CHARS_RE.sub(_escape_char, str(text))
    if len(escaped) > max_length:
        return f"{escaped[:max_length]}...[{len(escaped) - max_length} more chars]"
    return escaped


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def describe_error(error: BaseException) -> tuple[str, str]:
    """The exception's type and a sanitized message with quoted literals redacted.

    Why redact: engines quote the offending *value* (Spark's CAST_INVALID_INPUT, Python's KeyError
    and ValueError), and that value is often a customer identifier. Full detail stays in Dagster.
    """
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return name, sanitize(_QUOTED_LITERAL_RE.sub("'<redacted>'", str(error)), max_length=1000)


def pseudonymize(value: object, key: str | bytes) -> str:
    """Keyed HMAC-SHA256 of an identifier, as hex.

    Why keyed: a plain hash of a short customer id can be reversed by hashing every possible id;
    the HMAC is stable for correlating events but meaningless without the key.
    """
    if not key:
        raise ValueError("pseudonym key is empty; set CHURN_PSEUDONYM_KEY or use pseudonym_key()")
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(key_bytes, str(value).encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym_key(settings: Settings) -> str:
    """CHURN_PSEUDONYM_KEY, else a random key generated once at `secrets/pseudonym.key` (0600).

    Why a stored key: pseudonyms must match across processes and restarts. Concurrent first calls
    agree because the key is published with `os.link`, which never overwrites.
    """
    if settings.pseudonym_key:
        return settings.pseudonym_key.get_secret_value()
    path = settings.home / "secrets" / "pseudonym.key"
    if not path.exists():
        ensure_dir(path.parent, 0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pseudonym.key.")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_hex(32).encode("ascii"))
            os.fsync(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.close(fd)
            os.unlink(tmp)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{path} has mode {mode:o}; the pseudonym key must be 0600")
    key = path.read_text(encoding="ascii").strip()
    if not key:
        raise ValueError(f"{path} is empty; delete it to generate a new key (pseudonyms change)")
    return key
