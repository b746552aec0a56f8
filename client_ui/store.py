"""Saving drawings so that a database outage never loses one.

Every save writes the drawing's latest state; when the database is unreachable the state goes
to the outbox instead, and `flush()` (called periodically) moves it into the database later.
A drawing whose row was deleted (on the History page) is not written again: a later label or
stroke in a tab that still shows it must not bring the row back.
"""

from __future__ import annotations

import logging
import threading
from enum import Enum

from client_ui import queries
from client_ui.database import DATABASE_DOWN_ERRORS, Database
from client_ui.outbox import Outbox, PendingEntry, PredictionDraft

log = logging.getLogger(__name__)


class SaveOutcome(Enum):
    """Where a save left the drawing."""

    SAVED = "saved"
    PENDING = "pending"
    DELETED = "deleted"


class RowDeletedError(LookupError):
    """The drawing's row was in the database and has been deleted since."""


class PredictionStore:
    """Upserts drafts by drawing key; blocking, so call it through `run.io_bound`."""

    def __init__(self, database: Database, outbox: Outbox) -> None:
        self.database = database
        self.outbox = outbox
        self._row_ids: dict[str, int] = {}
        self._deleted: set[str] = set()
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

    def save(self, draft: PredictionDraft) -> SaveOutcome:
        """Write the drawing's row, or keep the draft in the outbox while the database is down."""
        with self._lock:
            if draft.key in self._deleted:
                return SaveOutcome.DELETED
            try:
                self._write(draft, self._row_ids.get(draft.key))
            except DATABASE_DOWN_ERRORS as error:
                log.warning(
                    "database unreachable, drawing %s kept in the outbox: %s",
                    draft.key,
                    _first_line(error),
                )
                self.outbox.put(draft, self._row_ids.get(draft.key))
                return SaveOutcome.PENDING
            except RowDeletedError:
                self._forget(draft.key)
                return SaveOutcome.DELETED
            self.outbox.remove(draft.key)
            return SaveOutcome.SAVED

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
                except RowDeletedError:
                    log.info(
                        "drawing %s was deleted meanwhile; its pending change is dropped",
                        entry.draft.key,
                    )
                    self._forget(entry.draft.key)
                    continue
                saved += 1
        if saved:
            log.info("saved %d pending drawing(s) from the outbox", saved)
        return saved

    def is_pending(self, key: str) -> bool:
        return self.outbox.contains(key)

    def is_deleted(self, key: str) -> bool:
        return key in self._deleted

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
        """Insert the drawing's first row, then update that row; RowDeletedError once it is gone."""
        self._create_tables_once()
        values = draft.row_values()
        with self.database.session() as session:
            if row_id is None:
                row_id = queries.insert_prediction(session, values)
            elif not queries.update_prediction(session, row_id, values):
                raise RowDeletedError(row_id)
        self._row_ids[draft.key] = row_id

    def _forget(self, key: str) -> None:
        self._deleted.add(key)
        self._row_ids.pop(key, None)
        self.outbox.remove(key)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
