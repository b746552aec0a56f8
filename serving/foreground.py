"""`python -m serving.foreground COMMAND...`: TorchServe's launcher in the foreground, stopped
properly when asked.

A container's process 1 ignores SIGTERM unless it handles it, and TorchServe's launcher neither
handles nor passes it on, so a stopped container waited out its grace period and was killed.
This small process (the standard library and psutil only, so it stays small beside the workers)
runs the launcher and, on SIGTERM or SIGINT, stops the frontend as `torchserve --stop` does:
requests in flight are answered, then the launcher ends, and with it this process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import psutil

FRONTEND_CLASS = "org.pytorch.serve.ModelServer"


def is_frontend(pid: int, config: Path | None = None) -> bool:
    """True when `pid` is a running TorchServe frontend (its JVM), started with `config` when
    one is given: a stale pid file's pid may since be another TorchServe's."""
    with suppress(psutil.Error):
        process = psutil.Process(pid)
        command = process.cmdline()
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and FRONTEND_CLASS in command
            and (config is None or str(config) in command)
        )
    return False


def run_until_stopped(command: list[str]) -> int:
    """Run `command` until it ends; returns its exit status."""
    launcher = subprocess.Popen(command)

    def stop_frontend(signum: int, _frame: object) -> None:
        with suppress(psutil.Error):
            for process in psutil.Process(launcher.pid).children(recursive=True):
                if is_frontend(process.pid):
                    process.terminate()

    signal.signal(signal.SIGTERM, stop_frontend)
    signal.signal(signal.SIGINT, stop_frontend)
    return launcher.wait()


if __name__ == "__main__":
    raise SystemExit(run_until_stopped(sys.argv[1:]))
