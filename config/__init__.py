"""Configuration every part of the project reads: ``from config import get_settings``."""

from config.settings import PROJECT_ROOT, Settings, SettingsError, get_settings, load_settings

__all__ = ["PROJECT_ROOT", "Settings", "SettingsError", "get_settings", "load_settings"]
