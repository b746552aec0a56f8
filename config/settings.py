"""The project's one place for configuration: environment variables and `.env`, read once.

Every part (training, serving, the app, the benchmark) asks ``get_settings()``; nothing else
reads ``os.environ`` for project settings. A variable set in the environment wins over `.env`;
`.env.example` lists every variable with its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENV_FILE = PROJECT_ROOT / ".env"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# The same, as they appear in a Host header (IPv6 in brackets).
LOOPBACK_HOST_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _env(name: str) -> Any:
    """The environment variable a field is read from."""
    return Field(validation_alias=AliasChoices(name))


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


class Settings(BaseSettings):
    """Resolved configuration; relative paths are taken from the project root."""

    # Read only by the variable names below, never by the fields' own names (DATA_DIR, ...).
    model_config = SettingsConfigDict(env_file=DEFAULT_ENV_FILE, extra="ignore", frozen=True)

    data_dir: Annotated[Path, _env("MNIST_DATA_DIR")] = Path("data")
    model_store: Annotated[Path, _env("MODEL_STORE")] = Path("model_store")
    results_dir: Annotated[Path, _env("RESULTS_DIR")] = Path("results")
    log_dir: Annotated[Path, _env("LOG_LOCATION")] = Path("logs")
    model_name: Annotated[str, _env("MODEL_NAME")] = "mnist"
    inference_url: Annotated[str, _env("TS_INFERENCE_URL")] = "http://127.0.0.1:8080"
    management_url: Annotated[str, _env("TS_MANAGEMENT_URL")] = "http://127.0.0.1:8081"
    metrics_url: Annotated[str, _env("TS_METRICS_URL")] = "http://127.0.0.1:8082"
    grpc_target: Annotated[str, _env("TS_GRPC_TARGET")] = "127.0.0.1:7070"
    grpc_management_target: Annotated[str, _env("TS_GRPC_MANAGEMENT_TARGET")] = "127.0.0.1:7071"
    key_file: Annotated[Path, _env("TS_KEY_FILE")] = Path("key_file.json")
    request_timeout_s: Annotated[
        float, _env("TS_REQUEST_TIMEOUT"), Field(gt=0, allow_inf_nan=False)
    ] = 10.0
    # Not shown in the settings' repr: it may hold a password.
    database_url_override: Annotated[str | None, _env("DATABASE_URL"), Field(repr=False)] = None
    postgres_host: Annotated[str | None, _env("POSTGRES_HOST")] = None
    postgres_port: Annotated[int, _env("POSTGRES_PORT"), Field(gt=0, lt=65536)] = 5432
    postgres_user: Annotated[str, _env("POSTGRES_USER")] = "postgres"
    postgres_password: Annotated[SecretStr, _env("POSTGRES_PASSWORD")] = SecretStr("")
    postgres_db: Annotated[str | None, _env("POSTGRES_DB")] = None
    ui_host: Annotated[str, _env("UI_HOST")] = "127.0.0.1"
    ui_port: Annotated[int, _env("UI_PORT"), Field(gt=0, lt=65536)] = 8000
    # PostgreSQL's statement timeout is whole milliseconds, and 0 would turn it off.
    db_timeout_s: Annotated[float, _env("DB_TIMEOUT"), Field(ge=0.01, allow_inf_nan=False)] = 2.0
    ui_allowed_hosts_override: Annotated[str | None, _env("UI_ALLOWED_HOSTS")] = None
    ui_password: Annotated[SecretStr, _env("UI_PASSWORD")] = SecretStr("")
    metrics_token: Annotated[SecretStr, _env("METRICS_TOKEN")] = SecretStr("")
    # When the Draw page calls the model unsure and offers its likeliest digits: the top
    # probability below this, or the top two closer than the margin (docs/confidence.md).
    ui_unsure_confidence: Annotated[float, _env("UI_UNSURE_CONFIDENCE"), Field(ge=0, le=1)] = 0.8
    ui_unsure_margin: Annotated[float, _env("UI_UNSURE_MARGIN"), Field(ge=0, le=1)] = 0.5
    # A candidate version the app also asks about every drawing, off the person's path
    # (shadow testing); its answers are stored beside the live ones (docs/retraining.md).
    shadow_model_version: Annotated[str | None, _env("SHADOW_MODEL_VERSION")] = None

    reads_process_environment: ClassVar[bool] = True

    @field_validator("data_dir", "model_store", "results_dir", "log_dir", "key_file", mode="before")
    @classmethod
    def _not_empty(cls, path: object) -> object:
        """An empty variable would mean the project root itself."""
        if isinstance(path, str) and not path.strip():
            raise ValueError("is empty: unset it for the default, or give a path")
        return path

    @field_validator("data_dir", "model_store", "results_dir", "log_dir", "key_file")
    @classmethod
    def _from_project_root(cls, path: Path) -> Path:
        return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()

    @field_validator("database_url_override")
    @classmethod
    def _readable_database_url(cls, url: str | None) -> str | None:
        """Checked at load, so that a bad URL is named; a relative SQLite file is taken from
        the project root, as every other path is."""
        if not url:
            return None
        try:
            parsed = make_url(normalise_database_url(url))
        except (ArgumentError, ValueError):  # their messages quote the URL, password and all
            raise ValueError(
                "not an SQLAlchemy URL such as postgresql://user:password@host:5432/database"
            ) from None
        file = parsed.database if parsed.get_backend_name() == "sqlite" else None
        if file and file != ":memory:" and not Path(file).is_absolute():
            parsed = parsed.set(database=str((PROJECT_ROOT / file).resolve()))
        return parsed.render_as_string(hide_password=False)

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _without_surrounding_space(cls, token: object) -> object:
        """A token made into a file (a Secret from a file) often ends in a newline, which no
        Authorization header carries."""
        return token.strip() if isinstance(token, str) else token

    @field_validator("inference_url", "management_url", "metrics_url")
    @classmethod
    def _without_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @property
    def database_url(self) -> str:
        """DATABASE_URL, else one built from the POSTGRES_* variables, else SQLite in data/."""
        if self.database_url_override:
            return self.database_url_override
        if self.postgres_host or self.postgres_db:
            url = URL.create(
                "postgresql+psycopg2",
                username=self.postgres_user,
                password=self.postgres_password.get_secret_value() or None,
                host=self.postgres_host or "127.0.0.1",  # an IPv6 address gets its brackets
                port=self.postgres_port,
                database=self.postgres_db or "mnist",
            )
            return url.render_as_string(hide_password=False)
        return f"sqlite:///{self.data_dir / 'predictions.db'}"

    @property
    def ui_on_loopback(self) -> bool:
        """True when the app listens only on this machine."""
        return self.ui_host in LOOPBACK_HOSTS

    @property
    def ui_reachable_beyond_this_machine(self) -> bool:
        """True when the app listens beyond loopback, or answers a name other than loopback's
        (behind a proxy): then it must have a password."""
        names = {_host_name(host) for host in self.ui_allowed_hosts}
        return not self.ui_on_loopback or not names <= set(LOOPBACK_HOST_NAMES)

    @property
    def ui_allowed_hosts(self) -> tuple[str, ...]:
        """`Host` values (`name` or `name:port`) the app answers; Origins must name one too.

        UI_ALLOWED_HOSTS (comma-separated) if set, else the loopback names with UI_PORT, plus
        UI_HOST itself when it is a name or address other than a wildcard.
        """
        if self.ui_allowed_hosts_override:
            names = self.ui_allowed_hosts_override.split(",")
            return tuple(name.strip().lower() for name in names if name.strip())
        names = list(LOOPBACK_HOST_NAMES)
        if self.ui_host not in (*LOOPBACK_HOSTS, *WILDCARD_HOSTS):
            names.append(f"[{self.ui_host}]" if ":" in self.ui_host else self.ui_host)
        return tuple(f"{name.lower()}:{self.ui_port}" for name in names)

    @property
    def torchscript_path(self) -> Path:
        """Where training exports the TorchScript model that the archive packs."""
        return self.model_store / "mnist_cnn.pt"

    @property
    def mar_path(self) -> Path:
        return self.model_store / f"{self.model_name}.mar"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if cls.reads_process_environment:
            return init_settings, env_settings, dotenv_settings
        return init_settings, dotenv_settings


class _GivenEnvironment(Settings):
    """Settings from an explicit mapping and `.env`, ignoring the process environment."""

    reads_process_environment: ClassVar[bool] = False


def normalise_database_url(url: str) -> str:
    """`postgres://` and `postgresql://` mean psycopg2, the driver the project ships, for the
    app and for retraining alike.

    SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which is not installed.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = DEFAULT_ENV_FILE
) -> Settings:
    """Settings from `.env` overlaid with the environment (or with `environ`, when given).

    Raises `SettingsError` naming every variable whose value is unusable.
    """
    try:
        if environ is None:
            return Settings(_env_file=env_file)
        names = _variable_names()
        given = {name: value for name, value in environ.items() if name in names}
        return _GivenEnvironment(_env_file=env_file, **given)
    except ValidationError as error:
        problems = "; ".join(
            f"{_variable_name(problem['loc'])}: {problem['msg']}" for problem in error.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None


def _variable_names() -> set[str]:
    return {
        choice
        for field in Settings.model_fields.values()
        if isinstance(field.validation_alias, AliasChoices)
        for choice in field.validation_alias.choices
        if isinstance(choice, str)
    }


def _variable_name(location: tuple[Any, ...]) -> str:
    field = Settings.model_fields.get(str(location[0])) if location else None
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0])
    return ".".join(map(str, location))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def _host_name(host: str) -> str:
    """`name` of a Host value `name`, `name:port`, `[v6]` or `[v6]:port`."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.split(":", 1)[0]
