"""A benchmark stopped by Ctrl-C or SIGTERM stops its TorchServe and its load (fakes for both)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import gpu_check, served, soak


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`serving.server` replaced: records 'started' and 'stopped'."""
    calls: list[str] = []

    def start(settings: object, overrides: object = None) -> SimpleNamespace:
        calls.append("started")
        return SimpleNamespace(pid=os.getpid())

    monkeypatch.setattr(served.server, "start_torchserve", start)
    monkeypatch.setattr(served.server, "stop", lambda settings: calls.append("stopped"))
    return calls


def test_sigterm_stops_the_private_torchserve(fake_server: list[str], tmp_path: Path) -> None:
    mar = tmp_path / "mnist.mar"
    mar.write_bytes(b"archive")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, served.running(mar, tmp_path / "server"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at the next bytecode; never reached
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert fake_server == ["started", "stopped"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_interrupted_soak_stops_its_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = []

    class Client:
        def __init__(self, settings: object) -> None: ...

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None: ...

        def predict(self, body: bytes, use_grpc: bool) -> None:
            sent.append(body)
            time.sleep(0.01)

    monkeypatch.setattr(soak, "TorchServeClient", Client)
    instance = SimpleNamespace(settings=None)
    # Ctrl-C as Python sets it up in a terminal (a job started in the background ignores it).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            soak._run_threads(instance, [b"digit"], 60.0, 2, soak.Tally())
    finally:
        signal.signal(signal.SIGINT, previous)
    count = len(sent)
    time.sleep(0.2)
    assert 0 < count == len(sent)


@pytest.mark.parametrize("threads", ["0", "1", "3"])
def test_soak_refuses_callers_that_cannot_share_rest_and_grpc(
    threads: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        soak.main(["--threads", threads])
    assert exit_info.value.code == 2
    assert "--threads must be even" in capsys.readouterr().err


@pytest.mark.parametrize("minutes", ["0", "-1", "nan"])
def test_soak_refuses_a_run_without_time(minutes: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        soak.main(["--minutes", minutes])
    assert "--minutes must be a positive number" in capsys.readouterr().err


def test_soak_without_a_model_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert soak.main(["--model", str(tmp_path / "none.pt")]) == 1
    assert "run `make train` first" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("devices", "on_cuda"),
    [(["cuda:0"], True), (["cpu"], False), (["cpu", "cuda:0"], False), ([], False)],
)
def test_gpu_check_passes_only_workers_that_said_they_loaded_on_cuda(
    devices: list[str], on_cuda: bool
) -> None:
    assert gpu_check.all_on_cuda(devices) is on_cuda


def test_gpu_check_waits_for_every_worker_to_say_its_device(tmp_path: Path) -> None:
    log = tmp_path / "model_log.log"
    log.write_text("... MNIST model 1.0 loaded on cuda:0\n")
    threading.Timer(
        0.5, lambda: log.write_text(log.read_text() + "... MNIST model 1.0 loaded on cpu\n")
    ).start()
    text = gpu_check.worker_log(log, workers=2)
    assert gpu_check.WORKER_DEVICE.findall(text) == ["cuda:0", "cpu"]


def test_gpu_check_reads_the_device_whatever_it_is() -> None:
    log = "... MNIST model 1.0 loaded on cpu\n... MNIST model 1.0 loaded on cuda:1\n"
    assert gpu_check.WORKER_DEVICE.findall(log) == ["cpu", "cuda:1"]


@pytest.mark.parametrize("samples", ["0", "1001", "300", "20000"])
def test_gpu_check_refuses_samples_it_cannot_spread(
    samples: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--samples", samples])
    assert exit_info.value.code == 2
    assert "--samples must divide 10,000" in capsys.readouterr().err
