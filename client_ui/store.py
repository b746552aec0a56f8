"""Saving drawings so that a database outage never loses one.

Every save writes the drawing's latest state; when the database is unreachable the state goes
to the outbox instead, and `flush()` (called periodically) moves it into the database later.
"""

from __future__ import annotations

import logging
import threading

from client_ui import queries
from client_ui.database import DATABASE_DOWN_ERRORS, Database
from client_ui.outbox import Outbox, PendingEntry, PredictionDraft

log = logging.getLogger(__name__)


class PredictionStore:
    """Upserts drafts by drawing key; blocking, so call it through `run.io_bound`."""

    def __init__(self, database: Database, outbox: Outbox) -> None:
        self.database = database
        self.outbox = outbox
        self._row_ids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._schema_ready = False

    def ensure_schema(self) -> bool:
        """Create the tables once the database answers; False while it does not."""
        try:
            self._create_tables_once()
        except DATABASE_DOWN_ERRORS as error:
            log.warning("database unreachable, tables not created yet: %s", _first_line(error))
            return False
        return True

    def save(self, draft: PredictionDraft) -> bool:
        """True when the row is in the database, False when it waits in the outbox."""
        with self._lock:
            try:
                self._write(draft, self._row_ids.get(draft.key))
            except DATABASE_DOWN_ERRORS as error:
                log.warning(
                    "database unreachable, drawing %s kept in the outbox: %s",
                    draft.key,
                    _first_line(error),
                )
                self.outbox.put(draft, self._row_ids.get(draft.key))
                return False
            self.outbox.remove(draft.key)
            return True

    def flush(self) -> int:
        """Move pending drafts into the database; returns how many were saved."""
        saved = 0
        with self._lock:
            for entry in self.outbox.entries():
                try:
                    self._write_pending(entry)
                except DATABASE_DOWN_ERRORS as error:
                    log.info("database still unreachable: %s", _first_line(error))
                    break
                saved += 1
        if saved:
            log.info("saved %d pending drawing(s) from the outbox", saved)
        return saved

    def is_pending(self, key: str) -> bool:
        return self.outbox.contains(key)

    def row_id(self, key: str) -> int | None:
        return self._row_ids.get(key)

    def pending_count(self) -> int:
        return len(self.outbox)

    def _create_tables_once(self) -> None:
        if not self._schema_ready:
            self.database.create_tables()
            self._schema_ready = True

    def _write_pending(self, entry: PendingEntry) -> None:
        key = entry.draft.key
        self._write(entry.draft, self._row_ids.get(key, entry.row_id))
        self.outbox.remove(key)

    def _write(self, draft: PredictionDraft, row_id: int | None) -> None:
        self._create_tables_once()
        values = draft.row_values()
        with self.database.session() as session:
            if row_id is None or not queries.update_prediction(session, row_id, values):
                row_id = queries.insert_prediction(session, values)
        self._row_ids[draft.key] = row_id


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
