"""Retraining reads the app's database: the database fixtures."""

from tests.fixtures.database import (  # noqa: F401  (fixtures)
    postgres_database,
    postgres_server,
    postgres_url,
)
