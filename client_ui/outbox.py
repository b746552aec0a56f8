"""Predictions the database did not take yet, kept on disk until it is back.

One JSON file per drawing (keyed by the drawing's id), so a restart of the app loses nothing
and a newer snapshot of the same drawing simply replaces the older one.
"""

from __future__ import annotations

import base64
import json
import logging
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from model.files import written_whole

log = logging.getLogger(__name__)

#: What reading a damaged entry raises: bad JSON, text or base64, a field missing or wrong.
UNREADABLE = (ValueError, KeyError, TypeError)


@dataclass
class PredictionDraft:
    """The current state of one drawing: what goes into its `predictions` row."""

    key: str
    timestamp: datetime
    predicted_digit: int
    confidence: float
    image_data: bytes
    model_version: str
    latency_ms: float
    true_label: int | None = None
    shadow_version: str | None = None
    shadow_digit: int | None = None
    shadow_confidence: float | None = None

    def row_values(self) -> dict[str, Any]:
        values = asdict(self)
        values["drawing_key"] = values.pop("key")
        return values


@dataclass
class PendingEntry:
    draft: PredictionDraft
    row_id: int | None


class Outbox:
    """A directory of pending drafts; writes are atomic (temp file + rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, draft: PredictionDraft, row_id: int | None) -> None:
        """Written whole: a crash or power cut leaves the old state or the new one."""
        with written_whole(self._path(draft.key)) as partial:
            partial.write_text(json.dumps(_encode(draft, row_id)))

    def remove(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def get(self, key: str) -> tuple[PendingEntry, str] | None:
        """The pending entry of `key` and its file's text (for `remove_if_unchanged`)."""
        path = self._path(key)
        try:
            text = path.read_text()
            return _decode(json.loads(text)), text
        except FileNotFoundError:
            return None
        except UNREADABLE as error:
            self._set_aside(path, error)
            return None

    def remove_if_unchanged(self, key: str, text: str) -> bool:
        """Remove the entry only if it still holds `text`: a newer state of it stays pending."""
        path = self._path(key)
        try:
            if path.read_text() != text:
                return False
        except FileNotFoundError:
            return False
        path.unlink(missing_ok=True)
        return True

    def contains(self, key: str) -> bool:
        return self._path(key).is_file()

    def entries(self) -> list[PendingEntry]:
        """Oldest first, so the database receives drawings in the order they were made."""
        if not self.directory.is_dir():
            return []
        entries = []
        for path in self.directory.glob("*.json"):
            try:
                entries.append(_decode(json.loads(path.read_text())))
            except FileNotFoundError:  # delivered meanwhile
                continue
            except UNREADABLE as error:
                self._set_aside(path, error)
        return sorted(entries, key=lambda entry: entry.draft.timestamp)

    def _set_aside(self, path: Path, error: Exception) -> None:
        """An entry that cannot be read (cut short by a crash, edited by hand) is renamed out of
        the way, kept for a person to look at, so that it holds up none of the others."""
        kept = path.with_suffix(".unreadable")
        with suppress(FileNotFoundError):
            path.replace(kept)
        log.error("outbox entry %s cannot be read (%s); kept as %s", path.name, error, kept)

    def __len__(self) -> int:
        return len(list(self.directory.glob("*.json"))) if self.directory.is_dir() else 0

    def _path(self, key: str) -> Path:
        if not key.replace("-", "").isalnum():
            raise ValueError(f"not a drawing key: {key!r}")
        return self.directory / f"{key}.json"


def _encode(draft: PredictionDraft, row_id: int | None) -> dict[str, Any]:
    data = asdict(draft)
    data["timestamp"] = draft.timestamp.isoformat()
    data["image_data"] = base64.b64encode(draft.image_data).decode("ascii")
    data["row_id"] = row_id
    return data


def _decode(data: dict[str, Any]) -> PendingEntry:
    row_id = data.pop("row_id")
    data["timestamp"] = datetime.fromisoformat(data["timestamp"])
    data["image_data"] = base64.b64decode(data["image_data"])
    return PendingEntry(PredictionDraft(**data), row_id)
