"""Alembic's environment for the app's database: the connection the app hands in
(`client_ui.database.Database.migrate`), or the configured DATABASE_URL for the alembic CLI."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from client_ui import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from config import get_settings, normalise_database_url

target_metadata = SQLModel.metadata


def run_migrations(connection: object) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = create_engine(normalise_database_url(get_settings().database_url))
    with engine.connect() as opened:
        run_migrations(opened)
    engine.dispose()
