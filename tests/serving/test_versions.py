"""Model versions side by side: the store's record of defaults (no server), and a real TorchServe
serving two versions of `mnist`, promoted and rolled back through the management API."""

from __future__ import annotations

import json
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from config import load_settings
from model import versions
from serving.archive import build_archive
from serving.client import TorchServeClient
from serving.models import describe, promote, rollback
from serving.server import private_instance_env, start_torchserve, stop
from training.drawings import drawings


def fake_mar(path: Path, version: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelVersion": version}}))
    return path


def test_versions_sort_by_number_and_the_next_one_is_a_major_above(tmp_path: Path) -> None:
    fake_mar(tmp_path / "mnist.mar", "1.20261231000000")
    fake_mar(tmp_path / "mnist-2.20261204000000.mar", "2.20261204000000")
    fake_mar(tmp_path / "other-9.1.mar", "9.1")
    found = [a.version for a in versions.archives(tmp_path, "mnist")]
    assert found == ["1.20261231000000", "2.20261204000000"]
    assert versions.next_version(tmp_path, "mnist", "20261205") == "3.20261205"


def test_without_make_archives_archive_the_default_is_the_version_loaded_first(
    tmp_path: Path,
) -> None:
    fake_mar(tmp_path / "mnist-3.0.mar", "3.0")
    fake_mar(tmp_path / "mnist-2.0.mar", "2.0")
    assert versions.default_version(tmp_path, "mnist") == "2.0"
    assert versions.load_order(tmp_path, "mnist")[0].name == "mnist-2.0.mar"


def test_promotions_are_recorded_and_rolled_back_in_order(tmp_path: Path) -> None:
    fake_mar(tmp_path / "mnist.mar", "1.1")
    fake_mar(tmp_path / "mnist-2.1.mar", "2.1")
    assert versions.default_version(tmp_path, "mnist") == "1.1"
    assert [p.name for p in versions.load_order(tmp_path, "mnist")] == [
        "mnist.mar",
        "mnist-2.1.mar",
    ]
    versions.record_default(tmp_path, "mnist", "2.1")
    assert versions.default_history(tmp_path, "mnist") == ["1.1", "2.1"]
    assert versions.load_order(tmp_path, "mnist")[0].name == "mnist-2.1.mar"
    assert versions.forget_default(tmp_path, "mnist") == "1.1"
    with pytest.raises(versions.VersionError, match="no earlier default"):
        versions.forget_default(tmp_path, "mnist")
    with pytest.raises(versions.VersionError, match=r"no version 7\.0"):
        versions.record_default(tmp_path, "mnist", "7.0")


def test_the_default_archive_follows_promotions_and_rollbacks(tmp_path: Path) -> None:
    assert versions.default_archive(tmp_path, "mnist") is None
    fake_mar(tmp_path / "mnist.mar", "1.1")
    fake_mar(tmp_path / "mnist-2.1.mar", "2.1")
    assert versions.default_archive(tmp_path, "mnist").path.name == "mnist.mar"
    versions.record_default(tmp_path, "mnist", "2.1")
    assert versions.default_archive(tmp_path, "mnist") == versions.Archive(
        "2.1", tmp_path / "mnist-2.1.mar"
    )
    versions.forget_default(tmp_path, "mnist")
    assert versions.default_archive(tmp_path, "mnist").version == "1.1"


def test_unreadable_store_files_are_version_errors_that_name_them(tmp_path: Path) -> None:
    fake_mar(tmp_path / "mnist.mar", "1.1")
    versions.defaults_file(tmp_path, "mnist").write_text('{"defaults": ["1.1"')  # cut short
    with pytest.raises(versions.VersionError, match=r"mnist\.defaults\.json is not a record"):
        versions.default_version(tmp_path, "mnist")
    versions.defaults_file(tmp_path, "mnist").unlink()
    (tmp_path / "mnist-2.1.mar").write_bytes(b"PK half an archive")
    with pytest.raises(versions.VersionError, match=r"mnist-2\.1\.mar is not a model archive"):
        versions.load_order(tmp_path, "mnist")


class SwitchingClient:
    """What `promote` asks of TorchServe: the served versions, and a switch of the default."""

    def __init__(self, served: list[str]) -> None:
        self.served = served
        self.switched: list[str] = []

    def versions(self) -> list[dict[str, str]]:
        return [{"modelVersion": version} for version in self.served]

    def set_default(self, version: str) -> None:
        self.switched.append(version)


def test_a_promotion_waits_for_a_change_of_the_default_under_way(tmp_path: Path) -> None:
    fake_mar(tmp_path / "mnist.mar", "1.1")
    fake_mar(tmp_path / "mnist-2.1.mar", "2.1")
    settings = load_settings({"MODEL_STORE": str(tmp_path)}, env_file=tmp_path / "none")
    client = SwitchingClient(["1.1", "2.1"])
    with versions.changing_default(tmp_path, "mnist"):
        waiting = threading.Thread(target=promote, args=(client, settings, "2.1"))
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive() and client.switched == []
    waiting.join(5)
    assert client.switched == ["2.1"] and versions.default_version(tmp_path, "mnist") == "2.1"


@pytest.mark.slow
def test_two_versions_are_served_promoted_and_rolled_back(
    trained_model: Path, scripted_model: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "model_store"
    build_archive(trained_model, store, "mnist", "1.0")
    candidate = build_archive(scripted_model, tmp_path / "candidate", "mnist", "2.0")
    shutil.move(candidate, store / versions.archive_name("mnist", "2.0"))
    settings = load_settings({**os.environ, **private_instance_env(tmp_path, store, "mnist")})
    [(image, _)] = drawings("black_on_white", 1, data_dir=mnist_dir)

    def answered_by(client: TorchServeClient, **options: object) -> tuple[str, str]:
        rest = client.predict(image, **options)["model_version"]  # type: ignore[arg-type]
        grpc = client.predict(image, use_grpc=True, **options)["model_version"]  # type: ignore[arg-type]
        return rest, grpc

    start_torchserve(settings)
    try:
        with TorchServeClient(settings) as client:
            assert answered_by(client) == ("1.0", "1.0")
            assert answered_by(client, version="2.0") == ("2.0", "2.0")
            assert answered_by(client, version="1.0") == ("1.0", "1.0")
            assert describe(client) == ["* 1.0  2/2 workers ready", "  2.0  2/2 workers ready"]
            promote(client, settings, "2.0")
            assert answered_by(client) == ("2.0", "2.0")
            assert describe(client)[1].startswith("* 2.0")
            with pytest.raises(versions.VersionError, match=r"does not serve mnist 3\.0"):
                promote(client, settings, "3.0")
            assert rollback(client, settings) == "1.0"
            assert answered_by(client) == ("1.0", "1.0")
            away = shutil.move(store / versions.archive_name("mnist", "2.0"), tmp_path)
            with pytest.raises(versions.VersionError, match=r"2\.0 is served but not in"):
                promote(client, settings, "2.0")  # another store than TorchServe's
            assert answered_by(client) == ("1.0", "1.0")  # nothing switched unrecorded
            shutil.move(away, store)
            promote(client, settings, "2.0")
        stop(settings)
        start_torchserve(settings)  # the promotion is kept across a restart
        with TorchServeClient(settings) as client:
            assert answered_by(client) == ("2.0", "2.0")
    finally:
        stop(settings)
