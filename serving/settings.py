"""The project's one place for configuration: environment variables and `.env`, read once.

Every part (training, serving, the app, the benchmark) asks ``get_settings()``; nothing else
reads ``os.environ`` for project settings. A variable set in the environment wins over `.env`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """Resolved configuration; paths are absolute."""

    data_dir: Path
    model_store: Path
    results_dir: Path
    log_dir: Path
    model_name: str
    inference_url: str
    management_url: str
    metrics_url: str
    grpc_target: str
    grpc_management_target: str
    key_file: Path
    request_timeout_s: float
    database_url: str
    ui_host: str
    ui_port: int

    @property
    def torchscript_path(self) -> Path:
        """Where training exports the TorchScript model that the archive packs."""
        return self.model_store / "mnist_cnn.pt"

    @property
    def mar_path(self) -> Path:
        return self.model_store / f"{self.model_name}.mar"


def _database_url(env: dict[str, str], data_dir: Path) -> str:
    """DATABASE_URL, else the POSTGRES_* variables, else an SQLite file under data/."""
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    if env.get("POSTGRES_HOST") or env.get("POSTGRES_DB"):
        user = quote(env.get("POSTGRES_USER", "postgres"), safe="")
        password = env.get("POSTGRES_PASSWORD", "")
        auth = f"{user}:{quote(password, safe='')}" if password else user
        host = env.get("POSTGRES_HOST", "127.0.0.1")
        port = env.get("POSTGRES_PORT", "5432")
        database = env.get("POSTGRES_DB", "mnist")
        return f"postgresql+psycopg2://{auth}@{host}:{port}/{database}"
    return f"sqlite:///{data_dir / 'predictions.db'}"


def _path(env: dict[str, str], name: str, default: str) -> Path:
    path = Path(env.get(name, default))
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


def load_settings(environ: dict[str, str] | None = None, env_file: Path | None = None) -> Settings:
    """Build settings from `.env` (if present) overlaid with the environment."""
    env_file = env_file if env_file is not None else PROJECT_ROOT / ".env"
    env: dict[str, str] = {}
    if env_file.is_file():
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(os.environ if environ is None else environ)

    data_dir = _path(env, "MNIST_DATA_DIR", "data")
    model_store = _path(env, "MODEL_STORE", "model_store")
    return Settings(
        data_dir=data_dir,
        model_store=model_store,
        results_dir=_path(env, "RESULTS_DIR", "results"),
        log_dir=_path(env, "LOG_LOCATION", "logs"),
        model_name=env.get("MODEL_NAME", "mnist"),
        inference_url=env.get("TS_INFERENCE_URL", "http://127.0.0.1:8080").rstrip("/"),
        management_url=env.get("TS_MANAGEMENT_URL", "http://127.0.0.1:8081").rstrip("/"),
        metrics_url=env.get("TS_METRICS_URL", "http://127.0.0.1:8082").rstrip("/"),
        grpc_target=env.get("TS_GRPC_TARGET", "127.0.0.1:7070"),
        grpc_management_target=env.get("TS_GRPC_MANAGEMENT_TARGET", "127.0.0.1:7071"),
        key_file=_path(env, "TS_KEY_FILE", "key_file.json"),
        request_timeout_s=float(env.get("TS_REQUEST_TIMEOUT", "10")),
        database_url=_database_url(env, data_dir),
        ui_host=env.get("UI_HOST", "127.0.0.1"),
        ui_port=int(env.get("UI_PORT", "8000")),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
