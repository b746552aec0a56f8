"""`make serve` / `make stop` end to end, on free ports with logs and key file in tmp."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from config import PROJECT_ROOT, load_settings
from serving.client import ServerUnavailableError, TorchServeClient
from serving.foreground import FRONTEND_CLASS
from serving.server import private_instance_env, wait_until_ready
from tests.fixtures.serving import RunningTorchServe, process_umask

pytestmark = pytest.mark.slow


def make(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a Makefile target as people do (its setup step is taken as up to date)."""
    command = ["make", "--no-print-directory", "-o", ".venv/.setup-stamp", target]
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_make_serve_and_stop_twice_each(torchserve: RunningTorchServe, tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    overrides = private_instance_env(tmp_path, torchserve.settings.model_store, "mnist")
    env = {**os.environ, **overrides}
    settings = load_settings(env)
    pid_file = settings.log_dir / "torchserve.pid"

    first = make("serve", env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "is ready" in first.stdout
    assert settings.inference_url in first.stdout
    assert str(settings.key_file) in first.stdout
    frontend = psutil.Process(int(pid_file.read_text()))
    try:
        with TorchServeClient(settings) as client:
            assert client.health() == {"status": "Healthy"}
            assert client.model_info()["version"] == "test"
        assert (settings.log_dir / "ts_log.log").is_file()

        second = make("serve", env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout
        assert int(pid_file.read_text()) == frontend.pid
    finally:
        stopped = make("stop", env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped" in stopped.stdout
    assert not frontend.is_running()
    assert not pid_file.exists()
    assert not settings.key_file.exists()
    with pytest.raises(ServerUnavailableError):
        TorchServeClient(settings, retries=0).health()

    again = make("stop", env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "not running" in again.stdout
    # The session's server was never touched.
    assert requests.get(f"{torchserve.settings.metrics_url}/metrics", timeout=10).ok


def test_foreground_stops_its_frontend_when_asked(
    torchserve: RunningTorchServe, tmp_path: Path
) -> None:
    """A container's stop: SIGTERM to `python -m serving.server foreground` (its process 1)
    stops TorchServe's frontend as `torchserve --stop` does, and then ends, leaving nothing."""
    overrides = private_instance_env(tmp_path, torchserve.settings.model_store, "mnist")
    env = {**os.environ, **overrides}
    settings = load_settings(env)
    command = [sys.executable, "-m", "serving.server", "foreground"]
    with (tmp_path / "foreground.out").open("w") as log:
        main = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
    started = psutil.Process(main.pid)
    tree: list[psutil.Process] = []
    try:
        wait_until_ready(settings)
        tree += started.children(recursive=True)
        [frontend] = [process for process in tree if FRONTEND_CLASS in process.cmdline()]
        assert process_umask(frontend.pid) == 0o077  # its key file is never readable by others
        main.send_signal(signal.SIGTERM)
        status = main.wait(timeout=120)
        print(f"\nforeground ended with status {status} after SIGTERM")
        assert not frontend.is_running()
        assert status in (0, 128 + signal.SIGTERM)  # the JVM's own exit on SIGTERM
    finally:
        for process in [started, *tree]:  # whatever is left, if the test failed
            with contextlib.suppress(psutil.Error):
                process.kill()
