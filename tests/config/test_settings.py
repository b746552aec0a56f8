"""config.settings: where each value comes from, and a clear error for a bad one."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import PROJECT_ROOT, SettingsError, load_settings


def settings_from(tmp_path: Path, env_file_text: str = "", **environ: str):
    env_file = tmp_path / ".env"
    env_file.write_text(env_file_text)
    return load_settings(environ, env_file=env_file)


def test_defaults_are_loopback_and_sqlite_under_the_project(tmp_path: Path) -> None:
    settings = settings_from(tmp_path)
    assert settings.inference_url == "http://127.0.0.1:8080"
    assert settings.ui_host == "127.0.0.1" and settings.ui_port == 8000
    assert settings.database_url == f"sqlite:///{PROJECT_ROOT / 'data' / 'predictions.db'}"
    assert settings.mar_path == PROJECT_ROOT / "model_store" / "mnist.mar"


def test_database_url_wins_over_postgres_variables(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path, DATABASE_URL="postgresql+psycopg2://me@db/x", POSTGRES_HOST="other"
    )
    assert settings.database_url == "postgresql+psycopg2://me@db/x"


def test_postgres_variables_build_a_url_with_the_password_quoted(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path,
        POSTGRES_HOST="db.internal",
        POSTGRES_PORT="6543",
        POSTGRES_USER="app",
        POSTGRES_PASSWORD="p@ss:w/rd",
        POSTGRES_DB="digits",
    )
    expected = "postgresql+psycopg2://app:p%40ss%3Aw%2Frd@db.internal:6543/digits"
    assert settings.database_url == expected
    assert "p@ss" not in repr(settings)  # the password never shows in logs or tracebacks


def test_a_password_in_the_database_url_stays_out_of_the_repr_and_errors(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, DATABASE_URL="postgresql://me:s3cret@db/x")
    assert settings.database_url == "postgresql+psycopg2://me:s3cret@db/x"
    assert "s3cret" not in repr(settings)
    with pytest.raises(SettingsError, match="DATABASE_URL") as refused:
        settings_from(tmp_path, DATABASE_URL="postgresql//me:s3cret@db/x")
    assert "s3cret" not in str(refused.value)


def test_an_ipv6_postgres_host_is_written_in_brackets(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, POSTGRES_HOST="::1")
    assert settings.database_url == "postgresql+psycopg2://postgres@[::1]:5432/mnist"


def test_a_relative_sqlite_file_is_taken_from_the_project_root(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, DATABASE_URL="sqlite:///data/other.db")
    assert settings.database_url == f"sqlite:///{PROJECT_ROOT / 'data' / 'other.db'}"


def test_the_fields_own_names_are_not_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("DB_TIMEOUT_S", "9")
    settings = load_settings(env_file=tmp_path / "absent.env")
    assert settings.data_dir == PROJECT_ROOT / "data" and settings.db_timeout_s == 2.0


def test_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    text = "UI_PORT=9000\nMODEL_NAME=from_file\n"
    settings = settings_from(tmp_path, text, UI_PORT="9100")
    assert settings.ui_port == 9100 and settings.model_name == "from_file"


def test_relative_paths_are_taken_from_the_project_root(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, MODEL_STORE="store", LOG_LOCATION=str(tmp_path / "l"))
    assert settings.model_store == PROJECT_ROOT / "store"
    assert settings.log_dir == tmp_path / "l"


def test_trailing_slashes_are_dropped_from_urls(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, TS_MANAGEMENT_URL="http://127.0.0.1:9081/")
    assert settings.management_url == "http://127.0.0.1:9081"


def test_a_metrics_token_read_from_a_file_loses_its_newline(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, METRICS_TOKEN="c0ffee\n")
    assert settings.metrics_token.get_secret_value() == "c0ffee"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("UI_PORT", "eighty"), ("UI_PORT", "70000"), ("TS_REQUEST_TIMEOUT", "0"),
     ("TS_REQUEST_TIMEOUT", "nan"), ("POSTGRES_PORT", "-1"), ("DB_TIMEOUT", "inf"),
     ("DB_TIMEOUT", "0.0001"), ("MNIST_DATA_DIR", ""), ("MODEL_STORE", " "),
     ("DATABASE_URL", "postgresql://me@db:port/x"), ("DATABASE_URL", "not a url")],
)  # fmt: skip
def test_a_bad_value_names_its_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        settings_from(tmp_path, **{variable: value})


def test_a_bad_value_in_the_env_file_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="UI_PORT"):
        settings_from(tmp_path, "UI_PORT=abc\n")


def test_the_process_environment_is_read_when_no_mapping_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_NAME", "digits")
    assert load_settings(env_file=tmp_path / "absent.env").model_name == "digits"
    assert load_settings({}, env_file=tmp_path / "absent.env").model_name == "mnist"
