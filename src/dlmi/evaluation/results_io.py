"""Result rows as JSONL: append durably, read back tolerating a run killed mid-write.

No torch import here: reports read results without loading a model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def read_rows(path: str | Path, repair: bool = False) -> list[dict]:
    """All complete rows of a JSONL file ([] if it does not exist).

    A last line without its newline, or that is not valid JSON, is what a killed writer leaves:
    it is ignored with a warning, and with repair=True cut off so later appends start clean.
    A bad line elsewhere is skipped with a warning.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    head, newline, tail = data.rpartition(b"\n")
    rows = []
    for number, raw in enumerate(head.split(b"\n") if newline else [], start=1):
        if raw.strip():
            row = _parse(raw)
            if row is None:
                log.warning("%s: skipping unreadable line %d", path, number)
            else:
                rows.append(row)
    if tail.strip():
        row = _parse(tail)
        if row is not None:  # complete row whose newline was not written
            rows.append(row)
            if repair:
                with path.open("ab") as f:
                    f.write(b"\n")
        else:
            log.warning("%s: ignoring a truncated last line (a run was killed mid-write)", path)
            if repair:
                with path.open("r+b") as f:
                    f.truncate(len(head) + len(newline))
    return rows


def _parse(raw: bytes) -> dict | None:
    try:
        row = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) else None


def append_row(path: str | Path, row: dict) -> None:
    """Append one row and make it durable before returning (flush + fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def row_key(row: dict) -> tuple:
    """What makes a benchmark row unique: one (method, model, target, seed, prompt length)."""
    return (row["method"], row["model"], str(row["target_id"]), int(row["seed"]),
            int(row["prompt_length"]))
