"""Fixtures shared by every part of the suite, and the rule that keeps the fast tier fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.models import (  # noqa: F401
    mnist_dir,
    mnist_test,
    predictor,
    scripted_model,
    trained_model,
    trained_predictor,
)
from tests.fixtures.serving import torchserve  # noqa: F401

# Fixtures that train a model or start TorchServe: a test using one is slow by definition.
SLOW_FIXTURES = {"trained_model", "trained_predictor", "torchserve"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshots",
        metavar="DIR",
        type=Path,
        help="keep the browser test's screenshots in DIR (`--screenshots results` refreshes "
        "the README's); by default they go to a temporary folder",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a trained model or TorchServe as slow (`make test-fast`
    leaves those out), whether or not its author remembered to."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def require_or_skip(variable: str, reason: str) -> None:
    """Skip with `reason`, or fail when CI set `variable`=1 to demand the service."""
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason} ({variable}=1 makes this a failure)")
    pytest.skip(reason)
