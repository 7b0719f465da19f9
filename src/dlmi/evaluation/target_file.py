"""Reading target files: one target per line, or JSONL rows with `text` and/or `target_ids`.

Token ids, when a row has them, are the source of truth; text is for display.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dlmi.errors import UsageError
from dlmi.files import read_text


@dataclass
class TargetSpec:
    target: str | list[int]  # what the inverter receives
    row: dict  # the original JSONL row (or {"text": line}), kept for provenance and ids


def read_target_file(path: str | Path) -> list[TargetSpec]:
    path = Path(path)
    lines = [ln for ln in read_text(path, "targets file").splitlines() if ln.strip()]
    if not lines:
        raise UsageError(f"target file {path} has no targets")
    if all(_is_json_object(ln) for ln in lines):
        return [_from_row(json.loads(ln), path, i + 1) for i, ln in enumerate(lines)]
    # Plain text: \n inside a target can be written as the two characters backslash-n.
    return [TargetSpec(ln.replace("\\n", "\n"), {"text": ln}) for ln in lines]


def _from_row(row: dict, path: Path, line: int) -> TargetSpec:
    ids = row.get("target_ids")
    if ids is not None:
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise UsageError(f"{path}:{line}: target_ids must be a non-empty list of ints")
        return TargetSpec(ids, row)
    text = row.get("text")
    if not isinstance(text, str) or not text:
        raise UsageError(f"{path}:{line}: a JSONL row needs a non-empty 'text' or 'target_ids'")
    return TargetSpec(text, row)


def _is_json_object(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False
