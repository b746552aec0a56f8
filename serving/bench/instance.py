"""A private TorchServe for one benchmark configuration, started with `serving.server`.

Each instance gets its own work directory (model store with a re-packed archive, logs,
TMPDIR, key file) and free ports on 127.0.0.1, so it never meets the developer's TorchServe or
another one, and it is always stopped again (`serving.server.stop`), even on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from serving import server
from serving.client import TokenStore, parse_metrics
from serving.settings import Settings, load_settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Variant:
    """One serving configuration: overrides on config.properties and on the archive's
    model-config.yaml, and the frontend's log4j2 file (None: TorchServe's built-in one)."""

    name: str
    description: str
    properties: dict[str, str] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    log_config: Path | None = server.LOG_CONFIG_PATH


@dataclass
class Instance:
    """A running TorchServe: how to reach it, its start-up time and its processes."""

    variant: Variant
    settings: Settings
    frontend_pid: int
    model_config: dict[str, Any]
    cold_start_s: float
    tokens: TokenStore

    @property
    def predict_url(self) -> str:
        return f"{self.settings.inference_url}/predictions/{self.settings.model_name}"

    @property
    def grpc_target(self) -> str:
        return self.settings.grpc_target

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    def headers(self) -> dict[str, str]:
        key = self.tokens.key("inference")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def grpc_metadata(self) -> list[tuple[str, str]]:
        key = self.tokens.key("inference")
        return [("authorization", f"Bearer {key}")] if key else []

    def handler_batches(self) -> dict[int, float]:
        """Batches the handler has seen so far per batch size (its HandlerBatches counter)."""
        try:
            text = requests.get(f"{self.settings.metrics_url}/metrics", timeout=2).text
        except requests.RequestException:
            return {}
        counts: dict[int, float] = {}
        for sample in parse_metrics(text):
            if sample.name == "HandlerBatches" and "BatchSize" in sample.labels:
                size = int(sample.labels["BatchSize"])
                counts[size] = counts.get(size, 0.0) + sample.value
        return counts

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used so far by the frontend (JVM) and by its Python workers, from /proc."""
        cpu = _process_cpu()
        workers = _descendants(self.frontend_pid, cpu)
        return {
            "frontend": cpu.get(self.frontend_pid, (0, 0.0))[1],
            "worker": sum(cpu[pid][1] for pid in workers if pid in cpu),
        }


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `overrides`, nested sections (e.g. `handler:`) merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def repack_archive(source: Path, target: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Copy a .mar with its model-config.yaml updated by `overrides`; returns the config.

    The archive's model-config.yaml wins over config.properties for batching and workers, so
    this is how a variant changes them without rebuilding the archive.
    """
    with zipfile.ZipFile(source) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config_name = manifest["model"].get("configFile", "model-config.yaml")
        names = archive.namelist()
        config = yaml.safe_load(archive.read(config_name)) if config_name in names else {}
        config = _merged(config or {}, overrides)
        manifest["model"]["configFile"] = config_name
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
            for name in names:
                if name not in (config_name, "MAR-INF/MANIFEST.json"):
                    out.writestr(archive.getinfo(name), archive.read(name))
            out.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))
            out.writestr(config_name, yaml.safe_dump(config))
    return config


def _process_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every live process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            table[int(entry.name)] = (int(fields[1]), cpu)
    return table


def _descendants(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, pending = set(), [root]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def _private_settings(workdir: Path, model_name: str) -> Settings:
    """Settings for an instance on free loopback ports, with everything under `workdir`."""
    return load_settings(
        server.private_instance_env(workdir, workdir / "model_store", model_name),
        env_file=workdir / ".env-none",
    )


@contextmanager
def running(variant: Variant, mar: Path, config: Path, workdir: Path) -> Iterator[Instance]:
    """Start TorchServe for `variant` and wait until every worker is READY; always stop it.

    The cold start is the time from launching until READY (the server module polls every
    0.5 s, so it is measured to about half a second).
    """
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "model_store").mkdir(parents=True)
    model_name = mar.stem
    settings = _private_settings(workdir, model_name)
    model_config = repack_archive(mar, settings.mar_path, variant.model_config)
    started = time.perf_counter()
    try:
        handle = server.start_torchserve(
            settings,
            config_path=config,
            overrides=variant.properties,
            log_config=variant.log_config,
        )
        cold_start = time.perf_counter() - started
        tokens = TokenStore(settings.key_file, settings.management_url, timeout_s=2.0)
        yield Instance(variant, settings, handle.pid, model_config, cold_start, tokens)
    finally:
        server.stop(settings)
