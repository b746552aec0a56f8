"""Engine and one session per unit of work, for PostgreSQL or the embedded SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session, SQLModel

from client_ui import models  # noqa: F401  (registers the table on SQLModel.metadata)

#: Errors that mean "the database cannot be reached right now", as opposed to a bad statement.
DATABASE_DOWN_ERRORS = (OperationalError, InterfaceError)


class Database:
    """Owns the engine; every caller works inside `session()`, which commits or rolls back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(
            url, pool_pre_ping=True, connect_args=_connect_args(url)
        )

    def create_tables(self) -> None:
        SQLModel.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


def _connect_args(url: str) -> dict[str, Any]:
    """Short connect timeout on PostgreSQL so an outage is noticed in seconds, not minutes."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"check_same_thread": False}
    if backend == "postgresql":
        return {"connect_timeout": 3}
    return {}
