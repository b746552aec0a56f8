"""The Draw page's "unsure" candidates and its "Why?" attribution overlay.

When the calibrated top probability is low or the top two are close (thresholds in the settings,
chosen in docs/confidence.md), the page offers the likeliest digits with their probabilities and
asks for the label. "Why?" asks TorchServe's explanations API separately, after the prediction
is shown, so predictions are never slowed by it, and paints the attribution map over the 28x28
image the model saw: red pixels speak for the digit, blue ones against it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from nicegui import run, ui
from PIL import Image

from client_ui.images import data_url
from client_ui.layout import testid
from config import get_settings
from handler.preprocessing import InvalidInputError, decode_image, to_mnist_pixels
from serving.client import InputRejectedError, TorchServeError

log = logging.getLogger(__name__)

OVERLAY_SCALE = 8
# Candidates below this probability are noise, not alternatives worth offering.
MIN_CANDIDATE_PROBABILITY = 0.01
MAX_CANDIDATES = 3
EXPLAIN_FAILED_TEXT = (
    "No explanation: the model server is not reachable or failed. Try again in a moment."
)
UNSURE_TEXT = "Not sure about this one. Is it one of these? Click it, or the right digit below."


def candidates(answer: dict[str, Any]) -> list[tuple[int, float]]:
    """The two or three likeliest digits with their probabilities, likeliest first."""
    top = answer.get("top")
    if top:
        ranked = [(int(item["digit"]), float(item["probability"])) for item in top]
    else:  # an answer from a handler without ``top``
        probabilities = answer.get("probabilities") or []
        ranked = sorted(enumerate(map(float, probabilities)), key=lambda pair: -pair[1])
    ranked = ranked[:MAX_CANDIDATES]
    return ranked[:2] + [pair for pair in ranked[2:] if pair[1] >= MIN_CANDIDATE_PROBABILITY]


def is_unsure(answer: dict[str, Any], min_confidence: float, min_margin: float) -> bool:
    """Low top probability, or a runner-up close behind it."""
    ranked = candidates(answer)
    if len(ranked) < 2:
        return False
    (_, first), (_, second) = ranked[:2]
    return first < min_confidence or first - second < min_margin


def attribution_overlay_png(pixels: np.ndarray, attributions: Sequence[Sequence[float]]) -> bytes:
    """The 28x28 model view, dimmed, with positive attributions in red and negative in blue,
    each as opaque as its share of the largest one; enlarged with crisp pixels."""
    values = np.asarray(attributions, dtype=np.float32)
    if values.shape != pixels.shape:
        raise ValueError(f"attributions of shape {values.shape} for a {pixels.shape} image")
    strength = np.abs(values) / max(float(np.abs(values).max()), 1e-12)
    colour = np.where(values[..., None] >= 0, (255.0, 40.0, 40.0), (40.0, 110.0, 255.0))
    base = np.repeat(pixels.astype(np.float32)[..., None] * 0.6, 3, axis=2)
    alpha = strength[..., None]
    rgb = np.rint(base * (1 - alpha) + colour * alpha).astype(np.uint8)
    image = Image.fromarray(rgb, mode="RGB")
    size = (pixels.shape[1] * OVERLAY_SCALE, pixels.shape[0] * OVERLAY_SCALE)
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_for_drawing(drawing_png: bytes, explanation: dict[str, Any]) -> bytes:
    """The overlay for a drawing, on the model view made by the serving preprocessing."""
    pixels = to_mnist_pixels(decode_image(drawing_png))
    return attribution_overlay_png(np.asarray(pixels), explanation["attributions"])


class ConfidencePanel:
    """Candidates when unsure, and the "Why?" button with its overlay, for one Draw page."""

    def __init__(
        self,
        ask_explanation: Callable[[bytes], Awaitable[dict[str, Any]]],
        on_pick: Callable[[int], Awaitable[None]],
        min_confidence: float | None = None,
        min_margin: float | None = None,
    ) -> None:
        settings = get_settings()
        self.ask_explanation = ask_explanation
        self.on_pick = on_pick
        self.min_confidence = (
            settings.ui_unsure_confidence if min_confidence is None else min_confidence
        )
        self.min_margin = settings.ui_unsure_margin if min_margin is None else min_margin
        self.png: bytes | None = None
        self.sequence = 0
        with ui.card().classes("w-full bg-amber-50 border border-amber-400") as self.unsure:
            ui.label(UNSURE_TEXT).classes("text-sm font-bold text-amber-900")
            self.choices = ui.row().classes("gap-2")
        testid(self.unsure, "unsure-panel").set_visibility(False)
        with ui.row().classes("items-center gap-4"):
            self.why_button = testid(
                ui.button("Why?", icon="visibility", on_click=self.explain).props("flat"),
                "why-button",
            )
            self.overlay = testid(ui.image().classes("w-40 h-40"), "attribution-overlay")
            self.overlay.style("image-rendering: pixelated")
            self.caption = testid(ui.label("").classes("text-xs text-gray-600 w-48"), "why-caption")
        self.reset()

    def show(self, answer: dict[str, Any], png: bytes) -> None:
        """A new answer: offer candidates if unsure; an earlier overlay no longer applies."""
        self.reset()
        self.png = png
        self.why_button.enable()
        if not is_unsure(answer, self.min_confidence, self.min_margin):
            return
        self.choices.clear()
        with self.choices:
            for digit, probability in candidates(answer):
                button = ui.button(
                    f"{digit} · {probability:.0%}",
                    on_click=lambda _, d=digit: self.on_pick(d),
                )
                testid(button.props("outline color=amber-9"), f"candidate-{digit}")
        self.unsure.set_visibility(True)

    def reset(self) -> None:
        self.sequence += 1
        self.png = None
        self.unsure.set_visibility(False)
        self.overlay.set_visibility(False)
        self.overlay.set_source("")
        self.caption.set_text("")
        self.why_button.disable()

    async def explain(self) -> None:
        """Ask for the attribution map of the current drawing and paint it (off the prediction's
        path: only on click)."""
        if self.png is None:
            return
        sequence, png = self.sequence, self.png
        self.caption.set_text("Explaining…")
        try:
            explanation = await self.ask_explanation(png)
            overlay = await run.io_bound(overlay_for_drawing, png, explanation)
        except InputRejectedError as error:  # the handler's message is written for people
            if sequence == self.sequence:
                self.caption.set_text(f"No explanation: {error.message}")
            return
        except (TorchServeError, InvalidInputError, KeyError, ValueError) as error:
            log.warning("explanation failed: %s", error)  # addresses and details: the log only
            if sequence == self.sequence:
                self.caption.set_text(EXPLAIN_FAILED_TEXT)
            return
        if sequence != self.sequence:
            return
        self.overlay.set_source(data_url(overlay))
        self.overlay.set_visibility(True)
        digit = explanation.get("digit")
        self.caption.set_text(f"Red pixels made it a {digit}; blue ones spoke against it.")
