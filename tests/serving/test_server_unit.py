"""serving.server without a TorchServe: the config it writes, and the refusals that come
before launching anything."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from config import Settings, load_settings
from serving.foreground import FRONTEND_CLASS
from serving.server import (
    ServerError,
    private_instance_env,
    read_properties,
    render_config,
    run_in_foreground,
    running_instance,
    start_torchserve,
    stop,
    write_config,
)


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


def test_rendered_config_takes_addresses_and_store_from_settings(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "TS_INFERENCE_URL": "http://127.0.0.1:18080",
            "TS_MANAGEMENT_URL": "http://127.0.0.1:18081",
            "TS_METRICS_URL": "http://127.0.0.1:18082",
            "TS_GRPC_TARGET": "127.0.0.1:17070",
            "TS_GRPC_MANAGEMENT_TARGET": "127.0.0.1:17071",
            "MODEL_STORE": str(tmp_path / "my store"),
            "MODEL_NAME": "digits",
        },
        env_file=tmp_path / "no.env",
    )
    properties = render_config(settings, overrides={"job_queue_size": "7"})
    assert properties["inference_address"] == "http://127.0.0.1:18080"
    assert properties["metrics_address"] == "http://127.0.0.1:18082"
    assert properties["grpc_inference_port"] == "17070"
    assert properties["grpc_management_port"] == "17071"
    assert properties["model_store"] == str(tmp_path / "my store")
    assert properties["load_models"] == "digits=digits.mar"
    assert properties["job_queue_size"] == "7"
    assert Path(properties["metrics_config"]).is_absolute()
    allowed = re.compile(properties["allowed_urls"])
    assert allowed.fullmatch(f"file://{tmp_path}/my store/digits.mar")
    assert not allowed.fullmatch(f"file://{tmp_path}/elsewhere/digits.mar")
    assert not allowed.fullmatch("https://example.com/digits.mar")
    written = write_config(tmp_path / "ts.properties", settings)
    assert read_properties(written)["allowed_urls"] == properties["allowed_urls"]


def test_foreground_becomes_torchserve_in_the_foreground_in_the_key_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_in(tmp_path)
    settings.key_file.write_text("{}")  # a stale key file from an earlier start
    became: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: became.append((file, args, env)))
    monkeypatch.chdir(tmp_path.parent)
    run_in_foreground(settings)
    [(file, supervised, env)] = became
    assert supervised[:3] == [file, "-m", "serving.foreground"]  # stops it on SIGTERM
    args = supervised[3:]
    assert Path(args[0]).name == "torchserve"
    assert args[1] == "--start" and args[-1] == "--foreground"
    config = Path(args[args.index("--ts-config") + 1])
    assert read_properties(config)["inference_address"] == settings.inference_url
    assert Path.cwd() == settings.key_file.parent and not settings.key_file.exists()
    assert env["LOG_LOCATION"] == str(settings.log_dir)


def test_foreground_refuses_to_start_without_an_archive(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    settings.mar_path.unlink()
    with pytest.raises(ServerError, match="make archive"):
        run_in_foreground(settings)


def test_a_pid_file_naming_another_torchserve_is_not_taken_for_ours(tmp_path: Path) -> None:
    """A stale pid file whose pid now belongs to another TorchServe (another checkout, a test's
    private one) must not make `make stop` stop it, nor `make serve` think it is running."""
    settings = settings_in(tmp_path)
    settings.log_dir.mkdir(parents=True)
    other = subprocess.Popen([
        sys.executable, "-c", "import time; time.sleep(60)",
        FRONTEND_CLASS, "-f", str(tmp_path / "elsewhere" / "torchserve.properties"),
    ])  # fmt: skip
    try:
        (settings.log_dir / "torchserve.pid").write_text(f"{other.pid}\n")
        assert running_instance(settings) is None
        assert stop(settings) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_an_unreadable_archive_in_the_store_stops_the_start_with_its_name(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    with zipfile.ZipFile(settings.mar_path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelVersion": "1.0"}}))
    (settings.model_store / "mnist-2.0.mar").write_bytes(b"half an archive")
    environment = {**os.environ, **private_instance_env(tmp_path, settings.model_store, "mnist")}
    result = subprocess.run(
        [sys.executable, "-m", "serving.server", "start"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert result.returncode == 1
    assert "mnist-2.0.mar is not a model archive" in result.stderr
    assert "Traceback" not in result.stderr
