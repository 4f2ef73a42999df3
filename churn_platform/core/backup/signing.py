"""Manifest signatures: an HMAC with the platform's key, which never goes into a plain archive.

Why: the manifest lists every member's SHA-256 and the `.sha256` sidecar covers the manifest,
but anyone who can write the archive can recompute both. Only a keyed MAC tells a forged
manifest from ours; encrypted archives are authenticated by their encryption as well.
"""

from __future__ import annotations

import hashlib
import hmac
import re

SCHEME = "hmac-sha256"
# Domain separation: the same platform key also makes pseudonyms (HMACs of identifiers).
_PURPOSE = b"churn-backup manifest signature/1"
_LINE_RE = re.compile(rf"{SCHEME} ([0-9a-f]{{64}})\n?")


def signing_key(platform_key: str) -> bytes:
    """The key that signs manifests, derived so a pseudonym can never pass as a signature."""
    return hmac.new(platform_key.encode("utf-8"), _PURPOSE, hashlib.sha256).digest()


def sign(manifest: bytes, key: bytes) -> str:
    """The signature file's content for these exact manifest bytes."""
    return f"{SCHEME} {hmac.new(key, manifest, hashlib.sha256).hexdigest()}\n"


def signature_problem(manifest: bytes, signature: str, key: bytes) -> str | None:
    """Why `signature` does not vouch for `manifest`, or None when it does."""
    match = _LINE_RE.fullmatch(signature)
    if match is None:
        return f"not a {SCHEME} signature"
    expected = hmac.new(key, manifest, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(match.group(1), expected):
        return "manifest forged or signed with another platform key"
    return None
