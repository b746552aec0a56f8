"""serving.server refuses to start with clear messages before launching anything."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from serving.server import (
    ServerError,
    private_instance_env,
    running_instance,
    start_torchserve,
    stop,
)
from serving.settings import Settings, load_settings


def settings_in(tmp_path: Path, **extra: str) -> Settings:
    store = tmp_path / "store"
    store.mkdir()
    (store / "mnist.mar").write_bytes(b"not used: start stops before launching")
    return load_settings(
        {**private_instance_env(tmp_path, store, "mnist"), **extra}, env_file=tmp_path / "none"
    )


def test_a_missing_archive_says_to_run_make_archive(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    settings.mar_path.unlink()
    with pytest.raises(ServerError, match="make archive"):
        start_torchserve(settings)


def test_a_key_file_torchserve_cannot_write_is_refused(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, TS_KEY_FILE=str(tmp_path / "tokens.json"))
    with pytest.raises(ServerError, match=r"must end in /key_file\.json"):
        start_torchserve(settings)


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    port = int(settings.metrics_url.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(ServerError, match=re.escape(f"127.0.0.1:{port} is already in use")):
            start_torchserve(settings)
    assert running_instance(settings) is None


def test_stop_without_a_server_is_harmless_and_clears_a_stale_pid_file(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    settings.log_dir.mkdir(parents=True)
    pid_file = settings.log_dir / "torchserve.pid"
    pid_file.write_text("999999999\n")  # no such process
    assert stop(settings) is False
    assert not pid_file.exists()
