"""Reading a user's input file: every way it can be wrong is one line that says what to fix."""

from __future__ import annotations

from pathlib import Path

from dlmi.errors import UsageError


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of `path`; `what` names the file in messages ("targets file", ...)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory: give a file")
    if not path.exists():
        raise UsageError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {exc.start}): "
                         "save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
