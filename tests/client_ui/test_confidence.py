"""The Draw page's unsure candidates and "Why?" overlay, with NiceGUI's simulated user."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from nicegui.testing.user import User
from PIL import Image

from client_ui import confidence
from client_ui.confidence import (
    EXPLAIN_FAILED_TEXT,
    UNSURE_TEXT,
    attribution_overlay_png,
    candidates,
    is_unsure,
)
from client_ui.services import AppServices
from config import load_settings
from serving.client import ServerUnavailableError
from tests.client_ui.conftest import FakeModelClient, digit_png
from tests.client_ui.test_pages import eventually, stored, stroke


class ExplainingClient(FakeModelClient):
    """The fake model client, with set probabilities and the explanations call."""

    def __init__(self) -> None:
        super().__init__()
        self.probabilities: list[float] | None = None
        self.explained: list[bytes] = []
        self.explain_down = False

    def predict(self, image_bytes: bytes) -> dict[str, Any]:
        answer = super().predict(image_bytes)
        if self.probabilities is not None:
            ranked = sorted(range(10), key=lambda d: -self.probabilities[d])
            answer.update(
                digit=ranked[0],
                confidence=self.probabilities[ranked[0]],
                probabilities=self.probabilities,
                top=[{"digit": d, "probability": self.probabilities[d]} for d in ranked[:3]],
            )
        return answer

    def explain(self, image_bytes: bytes) -> dict[str, Any]:
        if self.explain_down:
            raise ServerUnavailableError("connection refused (fake)")
        self.explained.append(image_bytes)
        attributions = np.zeros((28, 28))
        attributions[5:20, 10:14] = 0.5
        attributions[5:8, 15:20] = -0.2
        return {"digit": self.digit, "attributions": attributions.tolist()}


UNSURE = [0.02, 0.01, 0.01, 0.46, 0.01, 0.38, 0.02, 0.005, 0.08, 0.005]


@pytest.fixture
def fake_client() -> ExplainingClient:
    return ExplainingClient()


def answer_with(probabilities: list[float], top: bool = True) -> dict[str, Any]:
    ranked = sorted(range(10), key=lambda d: -probabilities[d])
    answer: dict[str, Any] = {"probabilities": probabilities}
    if top:
        answer["top"] = [{"digit": d, "probability": probabilities[d]} for d in ranked[:3]]
    return answer


def test_candidates_are_the_likeliest_two_or_three() -> None:
    assert candidates(answer_with(UNSURE)) == [(3, 0.46), (5, 0.38), (8, 0.08)]
    assert candidates(answer_with(UNSURE, top=False)) == [(3, 0.46), (5, 0.38), (8, 0.08)]
    two_likely = [0.0] * 10
    two_likely[1], two_likely[7], two_likely[4] = 0.55, 0.443, 0.007
    assert candidates(answer_with(two_likely)) == [(1, 0.55), (7, 0.443)]


@pytest.mark.parametrize(
    ("top_two", "unsure"),
    [((0.97, 0.02), False), ((0.7, 0.1), True), ((0.85, 0.14), False), ((0.82, 0.4), True)],
    ids=["sure", "low-confidence", "clear-margin", "close-runner-up"],
)
def test_unsure_when_the_top_is_low_or_the_runner_up_close(
    top_two: tuple[float, float], unsure: bool
) -> None:
    probabilities = [0.0] * 10
    probabilities[2], probabilities[6] = top_two
    assert is_unsure(answer_with(probabilities), min_confidence=0.8, min_margin=0.5) is unsure


def test_the_overlay_colours_pixels_by_the_sign_of_their_attribution() -> None:
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[10, 10] = pixels[3, 3] = 255
    attributions = np.zeros((28, 28))
    attributions[10, 10], attributions[3, 3] = 2.0, -1.0
    image = np.asarray(Image.open(io.BytesIO(attribution_overlay_png(pixels, attributions))))
    assert image.shape == (28 * 8, 28 * 8, 3)
    red, blue, empty = image[10 * 8, 10 * 8], image[3 * 8, 3 * 8], image[20 * 8, 20 * 8]
    assert red[0] > 200 and red[2] < 60  # the strongest positive: fully red
    assert blue[2] > blue[0]  # negative: blue
    assert empty.tolist() == [0, 0, 0]  # no ink, no attribution: black
    with pytest.raises(ValueError, match="shape"):
        attribution_overlay_png(pixels, np.zeros((10, 10)))


async def test_an_unsure_answer_offers_candidates_and_a_click_labels_it(
    user: User, services: AppServices, fake_client: ExplainingClient
) -> None:
    fake_client.probabilities = UNSURE
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see(UNSURE_TEXT)
    await user.should_see("3 · 46%", marker="candidate-3")
    await user.should_see("5 · 38%", marker="candidate-5")
    await user.should_see("8 · 8%", marker="candidate-8")
    await user.should_see("Saved as #1")
    user.find(marker="candidate-5").click()
    await user.should_see("true label 5")
    assert [(d, label) for d, label, _ in stored(services.database)] == [(3, 5)]


async def test_a_sure_answer_offers_no_candidates_and_a_new_drawing_hides_them(
    user: User, fake_client: ExplainingClient
) -> None:
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("90.0%", marker="confidence")
    await user.should_not_see(UNSURE_TEXT)

    fake_client.probabilities = UNSURE
    stroke(user, digit_png(), strokes=2)
    await user.should_see(UNSURE_TEXT)
    user.find(marker="clear-button").click()
    await user.should_not_see(UNSURE_TEXT)


async def test_the_thresholds_come_from_the_settings(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = load_settings({"UI_UNSURE_CONFIDENCE": "0.95"}, env_file=None)
    monkeypatch.setattr(confidence, "get_settings", lambda: strict)
    await user.open("/")
    stroke(user, digit_png())  # 90 % is unsure when 95 % is asked for
    await user.should_see(UNSURE_TEXT)


async def test_why_is_asked_only_on_click_and_shows_the_overlay(
    user: User, fake_client: ExplainingClient
) -> None:
    await user.open("/")
    png = digit_png()
    stroke(user, png)
    await user.should_see("Saved as #1")
    assert fake_client.explained == []  # the prediction does not wait for an explanation
    user.find(marker="why-button").click()
    await user.should_see("Red pixels made it a 3", marker="why-caption")
    assert fake_client.explained == [png]
    overlay = user.find(marker="attribution-overlay").elements.pop()
    await eventually(lambda: overlay.source.startswith("data:image/png;base64,"))

    user.find(marker="clear-button").click()
    await user.should_not_see("Red pixels made it")
    assert overlay.source == ""


async def test_a_failed_explanation_is_said_beside_the_button(
    user: User, fake_client: ExplainingClient
) -> None:
    fake_client.explain_down = True
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    user.find(marker="why-button").click()
    await user.should_see(EXPLAIN_FAILED_TEXT, marker="why-caption")
    await user.should_not_see("connection refused")  # the error's details go to the log
    await user.should_see("3", marker="predicted-digit")
