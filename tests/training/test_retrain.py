"""`python -m training.retrain` on a real PostgreSQL holding labelled drawings: MNIST test digits
drawn canvas-style, some of them deliberately mispredicted, labelled as people would."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from client_ui import queries
from client_ui.database import Database
from model import versions
from model.calibration import temperature_of
from model.torchscript import load_torchscript, state_dict_path
from serving.archive import build_archive
from training.data import load_split
from training.drawings import STYLES as DRAWING_STYLES
from training.drawings import render_drawing
from training.retrain import in_holdout, main, only_retrain, read_labelled

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

STYLES = ("thick_stroke", "very_thick_stroke", "sent_28_thick_stroke", "black_on_white")


def store_drawings(
    database: Database, count: int, mnist_dir: Path, deleted: int = 0, keyed: bool = True
) -> str:
    """`count` labelled rows (every fifth prediction wrong), `deleted` of them removed again,
    and a few unlabelled ones, which retraining must not use; returns the database's URL.
    Each row has a drawing key as the app writes it, unless not `keyed` (rows from before keys).

    Each is another MNIST *training* digit, drawn in one of STYLES in turn: no digit is on both
    sides of the holdout split, and none is in the MNIST test set the candidate is judged on."""
    train = load_split(mnist_dir, train=True)
    rng = np.random.default_rng(3)
    samples = [
        (render_drawing(train.images[i].numpy(), DRAWING_STYLES[STYLES[i % len(STYLES)]], rng),
         int(train.labels[i]))
        for i in range(count + 5)
    ]  # fmt: skip
    with database.session() as session:
        ids = []
        for index, (image, label) in enumerate(samples[:count] + samples[-5:]):
            wrong = (label + 1) % 10 if index % 5 == 0 else label
            values = {
                "predicted_digit": wrong,
                "confidence": 0.5,
                "true_label": label if index < count else None,
                "image_data": image,
                "model_version": "1.0",
                "latency_ms": 5.0,
                "drawing_key": uuid.UUID(int=index + 1).hex if keyed else None,
            }
            ids.append(queries.insert_prediction(session, values))
        for row_id in ids[:deleted]:
            queries.delete_prediction(session, queries.get_prediction(session, row_id))
    return database.url


@pytest.fixture
def store(trained_model: Path, tmp_path: Path) -> Path:
    return model_store(trained_model, tmp_path)


def model_store(trained_model: Path, tmp_path: Path) -> Path:
    """A model store holding the session's model as version 1.0, its checkpoint beside it."""
    store = tmp_path / "model_store"
    store.mkdir()
    shutil.copy(trained_model, store / "mnist_cnn.pt")
    shutil.copy(state_dict_path(trained_model), state_dict_path(store / "mnist_cnn.pt"))
    build_archive(store / "mnist_cnn.pt", store, "mnist", "1.0")
    return store


def retrain(url: str, store: Path, results: Path, *extra: str) -> dict:
    argv = [
        "--database-url", url, "--model-path", str(store / "mnist_cnn.pt"),
        "--results-dir", str(results), "--min-drawings", "200", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((results / "retrain.json").read_text())


def test_the_split_by_drawing_is_stable_and_near_the_share() -> None:
    drawings = [uuid.uuid4().hex for _ in range(2000)]
    sides = [in_holdout(drawing, 20) for drawing in drawings]
    assert sides == [in_holdout(drawing, 20) for drawing in drawings]
    assert 0.17 < sum(sides) / len(sides) < 0.23


def test_a_drawing_is_named_by_its_key_which_a_dump_and_reload_keeps(
    postgres_database: Database, mnist_dir: Path
) -> None:
    """Not by its row id, which a reload into another database may renumber, moving it across
    the split; a row from before drawings had keys is named by its id."""
    url = store_drawings(postgres_database, 2, mnist_dir, keyed=False)
    with postgres_database.session() as session:
        values = {"predicted_digit": 4, "confidence": 0.9, "true_label": 4, "image_data": b"png",
                  "model_version": "1.0", "latency_ms": 5.0, "drawing_key": "a1b2"}  # fmt: skip
        row_id = queries.insert_prediction(session, values)
    names = [name for name, _, _ in read_labelled(url)]
    assert names[-1] == "a1b2" and str(row_id) not in names
    assert all(name.isdigit() for name in names[:-1])


def test_a_plain_postgresql_url_reads_with_the_projects_driver(
    postgres_database: Database, mnist_dir: Path
) -> None:
    """`postgresql://...` as README and docs/app.md write it (SQLAlchemy alone would pick
    psycopg 3, which the project does not ship)."""
    url = store_drawings(postgres_database, 12, mnist_dir)
    plain = url.replace("postgresql+psycopg2://", "postgresql://", 1)
    assert plain.startswith("postgresql://")
    assert len(read_labelled(plain)) == 12


def test_too_few_drawings_says_how_many_more_and_archives_nothing(
    postgres_database: Database,
    store: Path,
    mnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    postgres_url = store_drawings(postgres_database, 150, mnist_dir)
    argv = ["--database-url", postgres_url, "--model-path", str(store / "mnist_cnn.pt"),
            "--results-dir", str(tmp_path / "results"), "--min-drawings", "200"]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "150 labelled drawings" in said and "(50 more)" in said
    assert [a.version for a in versions.archives(store, "mnist")] == ["1.0"]
    assert not (tmp_path / "results" / "retrain.json").exists()


def test_a_second_retrain_at_the_same_time_stops_and_archives_nothing(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Both would choose the same next version, and one archive would replace the other."""
    argv = ["--database-url", f"sqlite:///{tmp_path / 'none.db'}",
            "--model-path", str(store / "mnist_cnn.pt"),
            "--results-dir", str(tmp_path)]  # fmt: skip
    with only_retrain(store):  # the first one, still training
        assert main(argv) == 1
    assert "Another retrain is writing to" in capsys.readouterr().err
    assert [a.version for a in versions.archives(store, "mnist")] == ["1.0"]


def test_a_missing_model_store_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--database-url", f"sqlite:///{tmp_path / 'none.db'}",
            "--model-path", str(tmp_path / "no_store" / "mnist_cnn.pt")]  # fmt: skip
    assert main(argv) == 1
    assert "make train-and-archive" in capsys.readouterr().err
    assert not (tmp_path / "no_store").exists()


def test_a_fine_tuned_candidate_is_compared_and_archived_as_the_next_version(
    postgres_database: Database, store: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    postgres_url = store_drawings(postgres_database, 600, mnist_dir, deleted=40)
    report = retrain(postgres_url, store, tmp_path / "results")
    now, new = report["current"], report["candidate"]
    print(
        f"\nretrain: {report['drawings']}; holdout {now['holdout']['accuracy']:.4f} -> "
        f"{new['holdout']['accuracy']:.4f}, MNIST {now['mnist_test']['accuracy']:.4f} -> "
        f"{new['mnist_test']['accuracy']:.4f}: {report['reason']}"
    )
    assert report["drawings"]["train"] + report["drawings"]["holdout"] == 560  # deleted excluded
    assert report["drawings"]["holdout_percent"] == 20
    assert report["current_version"] == "1.0" and report["candidate_version"].startswith("2.")
    assert report["decision"] == "archived", report["reason"]
    assert [a.version for a in versions.archives(store, "mnist")] == [
        "1.0",
        report["candidate_version"],
    ]
    markdown = (tmp_path / "results" / "retrain.md").read_text()
    assert (
        "| holdout digit 9 |" in markdown
        and (tmp_path / "results" / "retrain_confusion.png").stat().st_size
    )
    assert versions.default_version(store, "mnist") == "1.0"  # archived, not promoted
    chosen = report["temperature"]  # too few holdout drawings to refit it on (1000 by default)
    assert not chosen["refitted"] and "refitting needs 1000" in chosen["reason"]
    assert temperature_of(candidate_file(store, report)) == pytest.approx(
        temperature_of(load_torchscript(store / "mnist_cnn.pt"))
    )


def candidate_file(store: Path, report: dict) -> torch.jit.ScriptModule:
    return load_torchscript(store / f"mnist_cnn-{report['candidate_version']}.pt")


def test_a_candidate_refitted_on_the_holdout_carries_its_own_temperature(
    postgres_database: Database, store: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    """A barely trained candidate reads the holdout drawings with another confidence than
    the current model's temperature implies; with enough of them, T is refitted there."""
    url = store_drawings(postgres_database, 300, mnist_dir)
    report = retrain(
        url, store, tmp_path / "results", "--from-scratch", "--mnist-images", "200", "--force",
        "--min-calibration-drawings", "20",
    )  # fmt: skip
    chosen = report["temperature"]
    kept = temperature_of(load_torchscript(store / "mnist_cnn.pt"))
    assert chosen["refitted"], chosen["reason"]
    assert chosen["drawings"] == report["drawings"]["holdout"]
    assert chosen["ece_refitted"] < chosen["ece_kept"]
    assert chosen["temperature"] != pytest.approx(kept, rel=0.05)
    assert temperature_of(candidate_file(store, report)) == pytest.approx(chosen["temperature"])
    assert "refitted:" in (tmp_path / "results" / "retrain.md").read_text()


def test_a_worse_candidate_is_refused_with_the_reason(
    postgres_database: Database, store: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    postgres_url = store_drawings(postgres_database, 300, mnist_dir)
    report = retrain(
        postgres_url, store, tmp_path / "results", "--from-scratch", "--mnist-images", "200"
    )
    assert report["decision"] == "refused"
    assert report["reason"].startswith("worse on")
    assert [a.version for a in versions.archives(store, "mnist")] == ["1.0"]


def test_after_a_promotion_the_promoted_versions_weights_are_the_current_ones(
    postgres_database: Database, store: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    url = store_drawings(postgres_database, 300, mnist_dir)
    first = retrain(url, store, tmp_path / "first", "--force")
    versions.record_default(store, "mnist", first["candidate_version"])
    second = retrain(url, store, tmp_path / "second", "--force")
    assert second["current_version"] == first["candidate_version"]
    assert second["current_model"].endswith(f"mnist_cnn-{first['candidate_version']}.pt")
    assert second["candidate_version"].startswith("3.")
    assert list(first["mnist_change"]) == ["current"]  # the current model is make train's
    assert list(second["mnist_change"]) == ["current", "first"]
    made_by_make_train = first["current"]["mnist_test"]["accuracy"]
    assert second["mnist_change"]["first"]["reference_accuracy"] == pytest.approx(
        made_by_make_train
    )
