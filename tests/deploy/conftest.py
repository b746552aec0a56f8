"""The deployment tests use the app's database fixtures too."""

from tests.fixtures.database import (  # noqa: F401  (fixtures)
    postgres_database,
    postgres_server,
    postgres_url,
)
