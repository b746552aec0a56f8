"""Start, stop and check the project's TorchServe: ``python -m serving.server start|stop|status``.

``foreground`` runs it as a container's main process instead (the Containerfile).

TorchServe's launcher starts the Java frontend in the background and keeps ONE global pid file
in the temp directory, so every instance started here gets its own TMPDIR (``<log_dir>/tmp``)
and is tracked by our own pid file (``<log_dir>/torchserve.pid``): the fixture, the benchmark
and ``make serve`` never meet. The frontend writes ``key_file.json`` into its working
directory, so it runs in the folder of ``settings.key_file``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import javaproperties
import psutil

from config import PROJECT_ROOT, Settings, get_settings
from model import versions
from serving.client import TorchServeClient, TorchServeError
from serving.foreground import is_frontend

CONFIG_PATH = PROJECT_ROOT / "config.properties"
LOG_CONFIG_PATH = PROJECT_ROOT / "log4j2.xml"
KEY_FILE_NAME = "key_file.json"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.5
LOG_TAIL_LINES = 40
# Settings in config.properties that name files relative to the config's folder.
PATH_PROPERTIES = ("metrics_config",)


class ServerError(RuntimeError):
    """TorchServe could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class ServerHandle:
    """A TorchServe frontend started by this module."""

    pid: int
    settings: Settings

    @property
    def log_dir(self) -> Path:
        return self.settings.log_dir


def pid_file(settings: Settings) -> Path:
    return settings.log_dir / "torchserve.pid"


def effective_config_path(settings: Settings) -> Path:
    return settings.log_dir / "torchserve.properties"


def read_properties(path: Path) -> dict[str, str]:
    """The entries of a Java properties file."""
    with path.open(encoding="latin-1") as source:
        return javaproperties.load(source)


def render_config(
    settings: Settings,
    base: Path = CONFIG_PATH,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The base config with addresses, store and model taken from `settings`, then `overrides`."""
    properties = read_properties(base)
    for key in PATH_PROPERTIES:
        if key in properties and not Path(properties[key]).is_absolute():
            properties[key] = str((base.parent / properties[key]).resolve())
    grpc_host, grpc_port = _split_target(settings.grpc_target)
    grpc_management_host, grpc_management_port = _split_target(settings.grpc_management_target)
    store = settings.model_store.resolve()
    properties.update(
        {
            "inference_address": settings.inference_url,
            "management_address": settings.management_url,
            "metrics_address": settings.metrics_url,
            "grpc_inference_address": grpc_host,
            "grpc_inference_port": grpc_port,
            "grpc_management_address": grpc_management_host,
            "grpc_management_port": grpc_management_port,
            "model_store": str(store),
            "load_models": _load_models(settings),
            "allowed_urls": f"file://{re.escape(str(store))}/[^/]+[.]mar",
        }
    )
    properties.update(overrides or {})
    return properties


def _load_models(settings: Settings) -> str:
    """``name=name.mar``, or every version of the model in the store with the default first."""
    if not any(settings.model_store.glob(f"{settings.model_name}-*.mar")):
        return f"{settings.model_name}={settings.mar_path.name}"
    order = versions.load_order(settings.model_store, settings.model_name)
    return ",".join(path.name for path in order)


def write_config(
    path: Path,
    settings: Settings,
    base: Path = CONFIG_PATH,
    overrides: Mapping[str, str] | None = None,
) -> Path:
    """Write the config TorchServe will use (see `render_config`) to `path`."""
    properties = render_config(settings, base, overrides)
    return write_properties(path, properties, "serving.server from config.properties")


def write_properties(path: Path, properties: Mapping[str, str], written_by: str) -> Path:
    """A config.properties TorchServe reads, with a first line saying who wrote it."""
    # Not javaproperties.dump: TorchServe's launcher reads `vmargs` from this file by splitting
    # at "=" without unescaping, so only backslashes (Java's escape) are escaped here.
    lines = [f"{key}={value.replace(chr(92), chr(92) * 2)}\n" for key, value in properties.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Written by {written_by}; do not edit.\n" + "".join(lines))
    return path


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def private_instance_env(root: Path, model_store: Path, model_name: str) -> dict[str, str]:
    """Settings variables for an extra TorchServe on free ports whose files live under `root`.

    Tests and the benchmark run such instances beside a `make serve` one without clashing.
    """
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    return {
        "TS_INFERENCE_URL": f"http://127.0.0.1:{inference}",
        "TS_MANAGEMENT_URL": f"http://127.0.0.1:{management}",
        "TS_METRICS_URL": f"http://127.0.0.1:{metrics}",
        "TS_GRPC_TARGET": f"127.0.0.1:{grpc_inference}",
        "TS_GRPC_MANAGEMENT_TARGET": f"127.0.0.1:{grpc_management}",
        "TS_KEY_FILE": str(root / KEY_FILE_NAME),
        "LOG_LOCATION": str(root / "logs"),
        "MODEL_STORE": str(model_store),
        "MODEL_NAME": model_name,
    }


def running_instance(settings: Settings) -> ServerHandle | None:
    """Our TorchServe for these settings if its frontend is alive; a stale pid file is removed."""
    path = pid_file(settings)
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if is_frontend(pid, effective_config_path(settings)):
        return ServerHandle(pid=pid, settings=settings)
    path.unlink(missing_ok=True)
    return None


def start_torchserve(
    settings: Settings,
    *,
    config_path: Path = CONFIG_PATH,
    overrides: Mapping[str, str] | None = None,
    log_config: Path | None = LOG_CONFIG_PATH,
    timeout_s: float = READY_TIMEOUT_S,
) -> ServerHandle:
    """Start TorchServe in the background and wait until the model is READY.

    `log_config` is the log4j2 file for the frontend; None keeps TorchServe's built-in one.

    Returns the running instance when there already is one. On failure everything started is
    stopped again and `ServerError` carries the end of the logs.
    """
    existing = running_instance(settings)
    if existing is not None:
        return existing
    _check_can_start(settings)
    config = write_config(effective_config_path(settings), settings, config_path, overrides)
    settings.key_file.unlink(missing_ok=True)  # a stale key file would answer for the new server
    pid = _launch(settings, config, log_config)
    pid_file(settings).write_text(f"{pid}\n")
    try:
        wait_until_ready(settings, pid=pid, timeout_s=timeout_s)
    except BaseException:
        stop(settings)
        raise
    return ServerHandle(pid=pid, settings=settings)


def wait_until_ready(
    settings: Settings, *, pid: int | None = None, timeout_s: float = READY_TIMEOUT_S
) -> dict[str, Any]:
    """Poll ping and the management API until every worker of the model is READY.

    Returns the model's description. Raises `ServerError` with the log tail when the frontend
    `pid` exits or `timeout_s` passes first.
    """
    client = TorchServeClient(settings, timeout_s=2.0, retries=0)
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer yet"
    try:
        while time.monotonic() < deadline:
            if pid is not None and not is_frontend(pid):
                raise ServerError(f"TorchServe exited during start-up.\n{log_tail(settings)}")
            try:
                return _ready_description(client)
            except (TorchServeError, _NotReadyError) as problem:
                last_problem = str(problem)
            time.sleep(POLL_INTERVAL_S)
    finally:
        client.close()
    raise ServerError(
        f"TorchServe was not ready after {timeout_s:.0f} s ({last_problem}).\n{log_tail(settings)}"
    )


def stop(settings: Settings) -> bool:
    """Stop our TorchServe (frontend, then any worker left); False when none was running."""
    handle = running_instance(settings)
    if handle is None:
        return False
    with suppress(psutil.NoSuchProcess):  # it may end on its own meanwhile
        _terminate(psutil.Process(handle.pid))
    pid_file(settings).unlink(missing_ok=True)
    settings.key_file.unlink(missing_ok=True)
    return True


def _terminate(frontend: psutil.Process) -> None:
    """SIGTERM lets TorchServe stop its workers; whatever is left after the grace time is killed."""
    workers = frontend.children(recursive=True)
    frontend.terminate()
    try:
        frontend.wait(timeout=STOP_TIMEOUT_S)
    except psutil.TimeoutExpired:
        frontend.kill()
    _gone, alive = psutil.wait_procs(workers, timeout=STOP_TIMEOUT_S)
    for worker in alive:
        with suppress(psutil.NoSuchProcess):
            worker.kill()


def log_tail(settings: Settings, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of this start's console output (start-up and the JVM's own errors) and of
    ts_log.log, where log4j2.xml keeps TorchServe's warnings and errors."""
    parts = []
    for name in ("torchserve.out", "ts_log.log"):
        path = settings.log_dir / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- last lines of {path} ---\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no output in {settings.log_dir})"


def describe(settings: Settings) -> str:
    """Where to reach a running server, for people."""
    return "\n".join(
        [
            f"  REST inference   {settings.inference_url}/predictions/{settings.model_name}",
            f"  REST management  {settings.management_url}/models/{settings.model_name}",
            f"  Metrics          {settings.metrics_url}/metrics  (Prometheus text, no token)",
            f"  gRPC inference   {settings.grpc_target}",
            f"  gRPC management  {settings.grpc_management_target}",
            f"  Key file         {settings.key_file}  (Bearer tokens: inference, management, API)",
            f"  Logs             {settings.log_dir}",
        ]
    )


class _NotReadyError(Exception):
    pass


def _ready_description(client: TorchServeClient) -> dict[str, Any]:
    health = client.health().get("status")
    if health != "Healthy":
        raise _NotReadyError(f"ping says {health!r}")
    info = client.model_info()
    workers = info.get("workers") or []
    ready = sum(worker.get("status") == "READY" for worker in workers)
    wanted = max(1, int(info.get("minWorkers") or 1))
    if ready < wanted:
        raise _NotReadyError(f"{ready} of {wanted} workers READY")
    return info


def _split_target(target: str) -> tuple[str, str]:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ServerError(f"a gRPC target must look like HOST:PORT, not {target!r}")
    return host, port


def _check_can_start(settings: Settings) -> None:
    if settings.key_file.name != KEY_FILE_NAME:
        raise ServerError(
            f"TorchServe always writes {KEY_FILE_NAME} into its working directory; "
            f"TS_KEY_FILE must end in /{KEY_FILE_NAME} (it is {settings.key_file})"
        )
    if not settings.mar_path.is_file():
        raise ServerError(f"no model archive at {settings.mar_path}: run `make archive` first")
    for host, port in _listen_addresses(settings):
        if _port_taken(host, port):
            raise ServerError(
                f"{host}:{port} is already in use: another server (a TorchServe started "
                "elsewhere?) listens there; stop it or choose other ports (TS_* settings)"
            )


def _listen_addresses(settings: Settings) -> list[tuple[str, int]]:
    urls = (settings.inference_url, settings.management_url, settings.metrics_url)
    targets = (settings.grpc_target, settings.grpc_management_target)
    addresses = [urlsplit(url) for url in urls]
    return [(address.hostname or "", address.port or 80) for address in addresses] + [
        (host, int(port)) for host, port in map(_split_target, targets)
    ]


def _port_taken(host: str, port: int) -> bool:
    """True when something listens on host:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


#: TorchServe creates its key file readable by everyone and narrows it only after writing the
#: keys; with this mask no other local user can open it (nor its logs) in between.
PRIVATE_UMASK = 0o077


def _launch(settings: Settings, config: Path, log_config: Path | None) -> int:
    """Run the launcher (it starts the Java frontend and exits); returns the frontend's pid."""
    command, env = _launch_command(settings, config, log_config)
    with (settings.log_dir / "torchserve.out").open("wb") as console:
        launcher = subprocess.run(
            command,
            cwd=settings.key_file.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal must not reach the server
            umask=PRIVATE_UMASK,
            timeout=60,
            check=False,
        )
    launcher_pid_file = Path(env["TMPDIR"]) / ".model_server.pid"
    try:
        pid = int(launcher_pid_file.read_text().strip())
    except (OSError, ValueError) as error:
        raise ServerError(
            f"the TorchServe launcher failed (exit {launcher.returncode}).\n{log_tail(settings)}"
        ) from error
    return pid


def _launch_command(
    settings: Settings, config: Path, log_config: Path | None
) -> tuple[list[str], dict[str, str]]:
    """The launcher's command line and environment, with the folders they need made."""
    temp_dir = settings.log_dir / "tmp"
    temp_dir.mkdir(parents=True, exist_ok=True)
    settings.key_file.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(temp_dir),  # the launcher's pid file
        "TEMP": str(temp_dir),  # java.io.tmpdir: the workers' sockets
        "LOG_LOCATION": str(settings.log_dir),
        "METRICS_LOCATION": str(settings.log_dir),
    }
    env.pop("TS_CONFIG_FILE", None)  # the launcher would prefer it over --ts-config
    command = [
        torchserve_executable(),
        "--start",
        "--ncs",
        "--ts-config",
        str(config),
        "--model-store",
        str(settings.model_store),
    ]
    if log_config is not None:
        command += ["--log-config", str(log_config)]
    return command, env


def run_in_foreground(settings: Settings, log_config: Path | None = LOG_CONFIG_PATH) -> NoReturn:
    """Become TorchServe in the foreground, the main process of a container, through
    `serving.foreground`, which stops it properly when the container is stopped."""
    _check_can_start(settings)
    config = write_config(effective_config_path(settings), settings)
    settings.key_file.unlink(missing_ok=True)  # a stale key file would answer for the new server
    command, env = _launch_command(settings, config, log_config)
    os.chdir(settings.key_file.parent)
    os.umask(PRIVATE_UMASK)
    os.execvpe(sys.executable, foreground_command([*command, "--foreground"]), env)


def foreground_command(command: list[str]) -> list[str]:
    """`command` (TorchServe's launcher in the foreground) under `serving.foreground`."""
    return [sys.executable, "-m", "serving.foreground", *command]


def torchserve_executable() -> str:
    """The venv's launcher, so the workers run on the venv's Python."""
    candidate = Path(sys.executable).with_name("torchserve")
    return str(candidate) if candidate.exists() else "torchserve"


def _start(settings: Settings, args: argparse.Namespace) -> int:
    existing = running_instance(settings)
    if existing is not None:
        print(f"TorchServe is already running (pid {existing.pid}).")
        print(describe(settings))
        return 0
    overrides = {"number_of_gpu": str(args.gpus)} if args.gpus is not None else None
    print(f"Starting TorchServe (logs in {settings.log_dir}) ...", flush=True)
    try:
        handle = start_torchserve(settings, overrides=overrides, timeout_s=args.timeout)
    except (ServerError, versions.VersionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"TorchServe is ready (pid {handle.pid}), model {settings.model_name!r}:")
    print(describe(settings))
    return 0


def _stop(settings: Settings) -> int:
    handle = running_instance(settings)
    if handle is None:
        print("TorchServe is not running.")
        return 0
    stop(settings)
    print(f"TorchServe stopped (pid {handle.pid}).")
    return 0


def _status(settings: Settings) -> int:
    handle = running_instance(settings)
    if handle is None:
        print("TorchServe is not running.")
        return 1
    client = TorchServeClient(settings, retries=0)
    try:
        health = client.health().get("status")
        info = client.model_info()
    except TorchServeError as error:
        print(f"TorchServe runs (pid {handle.pid}) but does not answer: {error}")
        return 1
    finally:
        client.close()
    workers = info.get("workers") or []
    ready = sum(worker.get("status") == "READY" for worker in workers)
    print(
        f"TorchServe runs (pid {handle.pid}): {health}; model {settings.model_name!r} version "
        f"{info.get('modelVersion')}, {ready} of {len(workers)} workers READY."
    )
    print(describe(settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start in the background and wait until READY")
    start.add_argument("--timeout", type=float, default=READY_TIMEOUT_S, help="seconds to wait")
    start.add_argument("--gpus", type=int, help="GPUs the workers may use (default: CPU only)")
    commands.add_parser("foreground", help="run in the foreground (a container's main process)")
    commands.add_parser("stop", help="stop the server started by `start`")
    commands.add_parser("status", help="say whether it runs and how the model is")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "start":
        return _start(settings, args)
    if args.command == "foreground":
        try:
            run_in_foreground(settings)
        except (ServerError, versions.VersionError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if args.command == "stop":
        return _stop(settings)
    return _status(settings)


if __name__ == "__main__":
    raise SystemExit(main())
