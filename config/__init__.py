"""Configuration every part of the project reads: ``from config import get_settings``."""

from config.settings import (
    PROJECT_ROOT,
    Settings,
    SettingsError,
    get_settings,
    load_settings,
    normalise_database_url,
)

__all__ = [
    "PROJECT_ROOT",
    "Settings",
    "SettingsError",
    "get_settings",
    "load_settings",
    "normalise_database_url",
]
