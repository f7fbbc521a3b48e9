"""The text `sweep-status` last printed for a concluded campaign, kept so that the next call prints it
again when the pod says nothing changed.

A concluded campaign's reply carries ``hashes`` (pod/campaignstate.py reply_hashes: its stored
table's sha256 and that of the rest of the reply). The client keeps the text it rendered from that
reply, with its exit code and the hashes, in ``.workflow/cache/status-text-<key>.json``; the next
call sends the hashes, and a pod whose campaign is unchanged answers only ``unchanged``: no table is
read, sent, parsed or drawn (10,000 rows cost one small round trip). The key holds the target, the
campaign asked for, whether colour is on and the client's own code (every helpers module's mtime),
so a text is never shown for another pod, campaign, terminal or version. The text holds nothing the
printed status did not (no secret ever reaches a status). Written atomically; any failure to read
or write it just means the whole reply is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_HELPERS = Path(__file__).resolve().parent


def _code_marks() -> list[list[Any]]:
    marks = []
    for folder in (_HELPERS, _HELPERS / "tracking"):
        with os.scandir(folder) as entries:
            marks += [[entry.name, entry.stat().st_mtime_ns] for entry in entries if entry.name.endswith(".py")]
    return sorted(marks)


def cache_file(project_root: Path, target: list[str], campaign: str | None, colour: bool) -> Path:
    identity = json.dumps([target, campaign or "", colour, _code_marks()])
    name = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return project_root / ".workflow" / "cache" / f"status-text-{name}.json"


def load(path: Path) -> dict[str, Any] | None:
    """The kept text, code and hashes, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("text"), str) and isinstance(data.get("code"), int)
            and isinstance(data.get("hashes"), dict)):
        return None
    return data


def save(path: Path, hashes: dict[str, str], text: str, code: int) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"hashes": hashes, "text": text, "code": code}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
