"""The versions of a model in the model store, and which one is the default.

`make archive` writes ``<name>.mar``; `make retrain` adds ``<name>-<version>.mar`` beside it.
TorchServe serves all of them side by side (``load_models`` lists them, the default first) and
answers ``/predictions/<name>`` with the default. Promotions and rollbacks are recorded in
``<name>.defaults.json`` in the store, so a restart keeps the promoted default; the record is
the history of defaults, the last one current.
"""

from __future__ import annotations

import fcntl
import json
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from model.files import written_whole

VERSION = re.compile(r"^(\d+)\.(\d+)$")
#: The major number `version_key` gives a version not of the form ``<major>.<number>``.
UNNUMBERED = 1 << 62


class VersionError(ValueError):
    """A version is unknown or there is nothing to roll back to; the message says which."""


@dataclass(frozen=True)
class Archive:
    version: str
    path: Path


def archive_version(mar: Path) -> str:
    """The ``modelVersion`` in a .mar's manifest."""
    try:
        with zipfile.ZipFile(mar) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        return str(manifest["model"]["modelVersion"])
    except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as error:
        raise VersionError(
            f"{mar} is not a model archive this project made ({error}): archive it again "
            "(`make archive`; `make retrain` for a retrained version) or move it out of the store"
        ) from error


def archives(store: Path, model_name: str) -> list[Archive]:
    """Every archive of `model_name` in `store`, oldest version first."""
    paths = [store / f"{model_name}.mar", *store.glob(f"{model_name}-*.mar")]
    found = [Archive(archive_version(path), path) for path in paths if path.is_file()]
    return sorted(found, key=lambda archive: version_key(archive.version))


def version_key(version: str) -> tuple[int, ...]:
    """Sort key: ``2.20261204093000`` after ``1.20261231000000``; other forms last, by text."""
    match = VERSION.match(version)
    return (int(match[1]), int(match[2])) if match else (UNNUMBERED, 0)


def next_version(store: Path, model_name: str, stamp: str) -> str:
    """One major version above the newest in the store: ``<major + 1>.<stamp>``."""
    majors = [version_key(archive.version)[0] for archive in archives(store, model_name)]
    known = [major for major in majors if major != UNNUMBERED]
    return f"{max(known, default=0) + 1}.{stamp}"


def stored_versions(store: Path, model_name: str) -> set[str]:
    """The versions of `model_name` whose archives are in `store`."""
    return {archive.version for archive in archives(store, model_name)}


def archive_name(model_name: str, version: str) -> str:
    return f"{model_name}-{version}.mar"


def defaults_file(store: Path, model_name: str) -> Path:
    return store / f"{model_name}.defaults.json"


def default_history(store: Path, model_name: str) -> list[str]:
    """The recorded defaults, oldest first, keeping only versions still in the store."""
    path = defaults_file(store, model_name)
    try:
        recorded = json.loads(path.read_text())["defaults"] if path.is_file() else []
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise VersionError(
            f"{path} is not a record of defaults ({error}): delete it to make {model_name}.mar "
            "the default again, then promote the version that should be"
        ) from error
    present = stored_versions(store, model_name)
    return [version for version in recorded if version in present]


def default_version(store: Path, model_name: str) -> str | None:
    """The recorded default, else the version of ``<name>.mar`` (what `make archive` made),
    else the oldest archive's, which `load_order` then loads first."""
    history = default_history(store, model_name)
    if history:
        return history[-1]
    base = store / f"{model_name}.mar"
    if base.is_file():
        return archive_version(base)
    found = archives(store, model_name)
    return found[0].version if found else None


def default_archive(store: Path, model_name: str) -> Archive | None:
    """The archive of the default version: the one a deployment serves alone."""
    default = default_version(store, model_name)
    found = [archive for archive in archives(store, model_name) if archive.version == default]
    return found[0] if found else None


def record_default(store: Path, model_name: str, version: str) -> None:
    """Append `version` to the history of defaults (after checking it is in the store)."""
    if version not in stored_versions(store, model_name):
        raise VersionError(f"{model_name} has no version {version} in {store}")
    current = default_version(store, model_name)
    history = default_history(store, model_name) or ([current] if current else [])
    if history[-1:] != [version]:
        history.append(version)
    _write_history(store, model_name, history)


def previous_default(store: Path, model_name: str) -> str:
    """The default before the current one: what a rollback returns to."""
    history = default_history(store, model_name)
    if len(history) < 2:
        raise VersionError(f"{model_name} has no earlier default to roll back to")
    return history[-2]


def forget_default(store: Path, model_name: str) -> str:
    """Drop the current default from the history; returns the one before it (the rollback)."""
    previous = previous_default(store, model_name)
    _write_history(store, model_name, default_history(store, model_name)[:-1])
    return previous


def _write_history(store: Path, model_name: str, history: list[str]) -> None:
    with written_whole(defaults_file(store, model_name)) as partial:
        partial.write_text(json.dumps({"defaults": history}, indent=2) + "\n")


@contextmanager
def changing_default(store: Path, model_name: str) -> Iterator[None]:
    """One change of the default at a time per store: two promotions at once could leave
    TorchServe serving one version and the record naming the other."""
    with open(store / f".{model_name}.defaults.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load_order(store: Path, model_name: str) -> list[Path]:
    """The archives to load, the default first: TorchServe makes the first one the default."""
    default = default_version(store, model_name)
    found = archives(store, model_name)
    return [a.path for a in found if a.version == default] + [
        a.path for a in found if a.version != default
    ]
