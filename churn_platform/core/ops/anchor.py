"""The ops log's chain anchor: a copy of every file's chain head kept outside `logs/`.

Why: `chain_heads.json` lives beside the log files, so deleting the whole folder leaves nothing
that says a log ever existed. The anchor (last seq, i.e. line count, and last hash per file) is
kept elsewhere under the state root and in every backup manifest, so such a deletion is reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Link:
    """The last record of one log file as the anchor knows it."""

    seq: int
    hash: str


def parse_anchor(data: Any) -> dict[str, Link]:
    """Anchor entries per log file name; raises ValueError on anything malformed."""
    try:
        files = data["files"]
        return {str(name): Link(int(e["seq"]), str(e["hash"])) for name, e in files.items()}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a valid chain anchor: {exc!r}") from exc


def read_anchor(path: Path) -> dict[str, Link] | None:
    """The anchor at `path`, None when there is none; raises ValueError when it is damaged."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return parse_anchor(json.loads(text))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def anchor_document(links: Mapping[str, Link]) -> dict[str, Any]:
    """The JSON form written to the anchor file and into backup manifests."""
    return {"files": {name: {"seq": k.seq, "hash": k.hash} for name, k in sorted(links.items())}}


def compare(anchor: Mapping[str, Link], heads: Mapping[str, Link]) -> dict[str, str]:
    """Why each log file disagrees with its anchor (file name -> reason); empty when all agree."""
    problems: dict[str, str] = {}
    for name, link in sorted(anchor.items()):
        head = heads.get(name)
        if head is None:
            problems[name] = f"chain head missing: the anchor records seq {link.seq} for this file"
        elif head != link:
            problems[name] = (
                f"anchor mismatch: anchor records seq {link.seq}, chain head seq {head.seq}"
                + ("" if head.seq != link.seq else " with another hash")
            )
    for name in sorted(set(heads) - set(anchor)):
        problems[name] = "anchor mismatch: the anchor does not know this file"
    return problems
