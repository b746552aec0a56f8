"""Engine and one session per unit of work, for PostgreSQL or the embedded SQLite file.

Every call is bounded in time: a database that refuses, or one that accepts connections and
never answers, is an outage the app notices within `timeout_s`, never a page or a save that
waits for ever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session

from config import normalise_database_url

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The migration that describes the table as the app made it before it had migrations.
FIRST_MIGRATION = "0001"

#: libpq refuses connect timeouts under 2 s (it would round them up anyway).
MIN_CONNECT_TIMEOUT_S = 2
#: Threads that may wait on the database at once; calls beyond wait their turn, still bounded.
DATABASE_THREADS = 16


#: The PostgreSQL advisory lock that migrations hold (any number no other app takes).
MIGRATION_LOCK_ID = 0x6D6E697374  # "mnist"
_MIGRATION_LOCK = threading.Lock()


def upgrade(connection: Connection) -> None:
    """Alembic's upgrade to the newest migration on `connection`, in its transaction.

    A database the app made before it had migrations holds the first migration's table
    without Alembic's record of it: it is marked as at that migration, then upgraded in
    place, so its rows stay."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    tables = inspect(connection)
    if tables.has_table("predictions") and not tables.has_table("alembic_version"):
        command.stamp(config, FIRST_MIGRATION)
    command.upgrade(config, "head")


class DatabaseTimeoutError(Exception):
    """The database did not answer within the time allowed."""


#: Errors that mean "the database cannot be reached right now", as opposed to a bad statement.
DATABASE_DOWN_ERRORS = (OperationalError, InterfaceError, DatabaseTimeoutError)


class Database:
    """Owns the engine; every caller works inside `session()`, which commits or rolls back.

    `call()` runs a unit of work on the database's own threads and gives up after
    `timeout_s`; a call left behind finishes (or fails) on its own once the database answers.
    """

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = normalise_database_url(url)
        self.timeout_s = timeout_s
        self.engine: Engine = create_engine(
            self.url,
            pool_pre_ping=True,
            pool_timeout=timeout_s,
            connect_args=_connect_args(self.url, timeout_s),
        )
        self._threads = ThreadPoolExecutor(DATABASE_THREADS, thread_name_prefix="database")

    def migrate(self) -> None:
        """Bring the tables to the newest migration (client_ui/migrations), all of it or none.

        One migration at a time: in this process (Alembic keeps its state in module globals),
        and across processes, such as two replicas of the app starting together, by a lock
        the database holds until the transaction ends; the second then finds the tables new.
        On SQLite the transaction is opened by hand: its Python driver would otherwise commit
        each change of the schema on its own, leaving a failed upgrade half done."""
        with _MIGRATION_LOCK, self.engine.begin() as connection:
            backend = connection.dialect.name
            if backend == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif backend == "postgresql":
                # An index built on a large table may take longer than a statement may.
                connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            upgrade(connection)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def submit(self, work: Callable[..., T], *args: Any) -> Future[T]:
        """Start `work(*args)` on a database thread."""
        return self._threads.submit(work, *args)

    def wait(self, future: Future[T]) -> T:
        """The result of `future`, or DatabaseTimeoutError after `timeout_s`."""
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeoutError:
            raise DatabaseTimeoutError(
                f"the database did not answer within {self.timeout_s:g} s"
            ) from None

    def call(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in one transaction, bounded by `timeout_s` (blocking)."""

        def unit() -> T:
            with self.session() as session:
                return work(session)

        return self.wait(self.submit(unit))

    def ping(self) -> bool:
        """True when the database answers a trivial query within `timeout_s`."""
        try:
            self.call(lambda session: session.connection().exec_driver_sql("SELECT 1"))
        except DATABASE_DOWN_ERRORS:
            return False
        return True

    def dispose(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


def _connect_args(url: str, timeout_s: float) -> dict[str, Any]:
    """Server-side and TCP limits, so a connection to a hung server fails instead of waiting."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"check_same_thread": False, "timeout": timeout_s}
    if backend == "postgresql":
        milliseconds = int(timeout_s * 1000)
        return {
            "connect_timeout": max(MIN_CONNECT_TIMEOUT_S, round(timeout_s)),
            "options": (
                f"-c statement_timeout={milliseconds} "
                f"-c idle_in_transaction_session_timeout={4 * milliseconds}"
            ),
            "keepalives": 1,
            "keepalives_idle": max(1, round(timeout_s)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": milliseconds,
        }
    return {}
