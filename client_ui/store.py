"""Saving drawings so that a database outage, refused or hung, never loses one.

Every save first writes the drawing's latest state to the outbox on disk, then delivers it to
the database within the database's time limit; what is not delivered in time stays in the
outbox, and `flush()` (called periodically) delivers it later. Writes of one drawing never
overlap (one lock per drawing), so a write left behind by a hung database finishes before the
drawing is written again: its row is updated, never inserted twice. Other drawings do not wait
for it. A drawing whose row was deleted (on the History page) is not written again: a later
label or stroke in a tab that still shows it must not bring the row back.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from enum import Enum

from client_ui import metrics, queries
from client_ui.database import DATABASE_DOWN_ERRORS, Database
from client_ui.outbox import Outbox, PredictionDraft

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
        # Guards the maps above and the outbox files; never held during a database call.
        self._guard = threading.Lock()
        self._drawing_locks: dict[str, threading.Lock] = {}
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._schema_error = ""

    def ensure_schema(self) -> bool:
        """Bring the tables to the newest migration once the database answers; False until
        then. Called at start and by the app's watcher, so that pages find the tables even
        when no drawing has been saved since the database came back."""
        if self._schema_ready:
            return True
        if self._schema_lock.locked():
            return False  # a migration is under way (it may take long): not started twice
        try:
            self.database.wait(self.database.submit(self._create_tables_once))
        except DATABASE_DOWN_ERRORS as error:
            log.info("tables not brought up to date yet: %s", _first_line(error))
            return False
        except Exception as error:  # a background caller: tried again on its next round
            if str(error) != self._schema_error:  # said once, not every round
                log.exception("the tables could not be brought to the newest migration")
            self._schema_error = str(error)
            return False
        return True

    def save(self, draft: PredictionDraft) -> SaveOutcome:
        """Write the drawing's row, or keep the draft in the outbox while the database is down.

        A draft without a label never takes one back: not the row's (`_write`), nor one still
        waiting in the outbox."""
        with self._guard:
            if draft.key in self._deleted:
                return SaveOutcome.DELETED
            pending = self.outbox.get(draft.key) if draft.true_label is None else None
            if pending is not None:
                draft = replace(draft, true_label=pending[0].draft.true_label)
            self.outbox.put(draft, self._row_ids.get(draft.key))
        try:
            outcome = self._deliver(draft.key, wait_s=self.database.timeout_s)
        except DATABASE_DOWN_ERRORS as error:
            log.warning(
                "database unreachable, drawing %s kept in the outbox: %s",
                draft.key,
                _first_line(error),
            )
            metrics.SAVE_FAILURES.inc()
            metrics.DATABASE_UP.set(0)
            return SaveOutcome.PENDING
        if outcome is SaveOutcome.SAVED:
            metrics.SAVES.labels(via="direct").inc()
            metrics.DATABASE_UP.set(1)
        return SaveOutcome.PENDING if outcome is None else outcome

    def flush(self) -> int:
        """Move pending drafts into the database; returns how many were saved."""
        if not self.ensure_schema():
            return 0
        saved = 0
        for entry in self.outbox.entries():
            try:
                outcome = self._deliver(entry.draft.key, wait_s=0)
            except DATABASE_DOWN_ERRORS as error:
                log.info("database still unreachable: %s", _first_line(error))
                metrics.DATABASE_UP.set(0)
                break
            except Exception:  # refused by the database: kept, and it holds up no other drawing
                log.exception(
                    "drawing %s refused by the database; kept in the outbox", entry.draft.key
                )
                continue
            if outcome is SaveOutcome.SAVED:
                saved += 1
                metrics.SAVES.labels(via="outbox").inc()
                metrics.DATABASE_UP.set(1)
            elif outcome is SaveOutcome.DELETED:
                log.info(
                    "drawing %s was deleted meanwhile; its pending change is dropped",
                    entry.draft.key,
                )
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

    def _deliver(self, key: str, wait_s: float) -> SaveOutcome | None:
        """Write the outbox's state of `key`; None when an earlier write of it is still busy.

        Raises one of DATABASE_DOWN_ERRORS when the database fails or does not answer in time;
        the write then goes on alone and records its row once the database answers.
        """
        lock = self._lock_for(key)
        if not lock.acquire(timeout=wait_s):
            return None
        try:
            future = self.database.submit(self._deliver_locked, key, lock)
        except BaseException:
            lock.release()
            raise
        return self.database.wait(future)

    def _deliver_locked(self, key: str, lock: threading.Lock) -> SaveOutcome:
        """On a database thread, holding the drawing's lock, which it releases."""
        try:
            pending = self.outbox.get(key)
            if pending is None:
                return SaveOutcome.SAVED  # an earlier delivery took it
            entry, text = pending
            with self._guard:
                if key in self._deleted:
                    self.outbox.remove(key)
                    return SaveOutcome.DELETED
                row_id = self._row_ids.get(key, entry.row_id)
            try:
                row_id = self._write(entry.draft, row_id)
            except RowDeletedError:
                with self._guard:
                    self._forget(key)
                return SaveOutcome.DELETED
            with self._guard:
                self._row_ids[key] = row_id
                self.outbox.remove_if_unchanged(key, text)
            return SaveOutcome.SAVED
        finally:
            lock.release()

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._drawing_locks.setdefault(key, threading.Lock())

    def _create_tables_once(self) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                self.database.migrate()
                self._schema_ready = True

    def _write(self, draft: PredictionDraft, row_id: int | None) -> int:
        """Insert the drawing's first row, then update that row; RowDeletedError once it is gone.

        Without a known row id the row is first looked up by the drawing's key: an app killed
        after the database took the row, but before it recorded that, updates it on restart.
        An update without a label leaves the row's label alone: the Draw page never takes a
        label back, so one given on the History page meanwhile must stay."""
        self._create_tables_once()
        values = draft.row_values()
        with self.database.session() as session:
            if row_id is None:
                row_id = queries.row_id_for_key(session, draft.key)
            if row_id is None:
                return queries.insert_prediction(session, values)
            if draft.true_label is None:
                del values["true_label"]
            if not queries.update_drawing(session, draft.key, values):
                raise RowDeletedError(row_id)
        return row_id

    def _forget(self, key: str) -> None:
        self._deleted.add(key)
        self._row_ids.pop(key, None)
        self.outbox.remove(key)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
