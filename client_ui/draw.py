"""The drawing page: draw a digit, see the live prediction, confirm the true label."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from functools import partial
from typing import Any

from nicegui import background_tasks, run, ui

from client_ui import metrics
from client_ui.canvas import DrawingCanvas, Snapshot
from client_ui.confidence import ConfidencePanel
from client_ui.images import data_url, model_view_png
from client_ui.layout import page_frame, testid
from client_ui.models import utc_now
from client_ui.outbox import PredictionDraft
from client_ui.services import AppServices
from client_ui.store import SaveOutcome
from handler.preprocessing import InvalidInputError
from serving.client import (
    AuthorizationError,
    InputRejectedError,
    ServerUnavailableError,
    TorchServeError,
)

log = logging.getLogger(__name__)

#: On the 280 px canvas this becomes about MNIST's 2-3 px stroke once scaled to 28x28.
DEFAULT_STROKE_WIDTH = 24
EMPTY_HINT = "Draw a digit (0-9) in the box; the prediction follows every stroke."
NOTHING_DRAWN_HINT = "The canvas is empty: draw a digit first."
DOT_HINT = "That is only a dot: draw the whole digit."
PENDING_TEXT = (
    "Not saved yet: the database is unreachable. "
    "The prediction is kept and will be saved automatically when the database is back."
)
LABEL_WAITS_TEXT = (
    "Label {digit} noted: it is saved with this drawing as soon as the model server has read it."
)
DELETED_TEXT = (
    "This drawing was deleted on the History page, so changes to it are no longer saved. "
    "Clear the canvas to start a new drawing."
)


def register(services: AppServices) -> None:
    @ui.page("/")
    def draw_page() -> None:
        DrawPage(services)


class DrawPage:
    """One browser tab's drawing session; each new drawing gets its own key (and row)."""

    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.draft: PredictionDraft | None = None
        #: The person's label for the drawing on the canvas; it stays through further strokes.
        self.label: int | None = None
        #: The drawing before a Clear, until the candidate's answer about it is stored.
        self.previous_draft: PredictionDraft | None = None
        #: The newest drawing TorchServe has not been asked about; one call at a time.
        self.wanted_png: bytes | None = None
        self.predicting = False
        #: The newest drawing the candidate has not been asked about; one call at a time.
        self.shadow_wanted: PredictionDraft | None = None
        self.shadow_running = False
        #: Saves in the order they were asked for, so the newest state of a drawing lands last.
        self.save_lock = asyncio.Lock()
        self.drawing_key = uuid.uuid4().hex
        self.last_png: bytes | None = None
        self.sequence = 0
        self.waiting_for_database = False
        page_frame("/")
        with ui.row().classes("w-full justify-center items-start gap-10 p-4"):
            self._build_drawing_column()
            self._build_result_column()
        ui.timer(2.0, self._check_pending_save)

    def _build_drawing_column(self) -> None:
        with ui.column().classes("items-center gap-2"):
            self.canvas = DrawingCanvas(
                stroke_width=DEFAULT_STROKE_WIDTH, on_stroke=self.on_drawing_changed
            )
            testid(self.canvas, "canvas")
            with ui.row().classes("items-center gap-3"):
                ui.label("Stroke width")
                slider = ui.slider(min=6, max=40, step=2, value=DEFAULT_STROKE_WIDTH)
                slider.on_value_change(lambda event: self.canvas.set_stroke_width(event.value))
                testid(slider.classes("w-32"), "stroke-width")
                # The drawing is named when the click arrives, before a Clear right after it.
                undo = ui.button("Undo", icon="undo", on_click=lambda: self.undo(self.drawing_key))
                testid(undo, "undo-button")
                testid(ui.button("Clear", icon="clear", on_click=self.clear), "clear-button")
            self.hint = testid(ui.label(EMPTY_HINT).classes("text-gray-600"), "hint")

    def _build_result_column(self) -> None:
        with ui.column().classes("gap-3 w-[460px]"):
            self._build_server_banner()
            with ui.row().classes("items-end gap-6"):
                with ui.column().classes("items-center gap-0"):
                    ui.label("Prediction").classes("text-sm text-gray-500")
                    self.digit_label = ui.label("–").classes("text-7xl font-bold")
                    testid(self.digit_label, "predicted-digit")
                with ui.column().classes("gap-0"):
                    ui.label("Confidence").classes("text-sm text-gray-500")
                    self.confidence_label = testid(ui.label("–").classes("text-2xl"), "confidence")
                with ui.column().classes("items-center gap-0"):
                    ui.label("What the model saw").classes("text-sm text-gray-500")
                    self.model_view = ui.image().classes("w-28 h-28 bg-black")
                    self.model_view.style("image-rendering: pixelated")
                    testid(self.model_view, "model-view")
            self.chart = testid(ui.echart(_chart_options([0.0] * 10)), "probabilities")
            self.chart.classes("w-[360px] h-48")
            self.confidence = ConfidencePanel(self._ask_explanation, self.confirm_label)
            ui.label("Click the digit you drew to confirm or correct it:").classes("text-sm")
            with ui.row().classes("gap-1"):
                self.label_buttons = [
                    testid(
                        ui.button(str(digit), on_click=lambda _, d=digit: self.confirm_label(d)),
                        f"label-{digit}",
                    ).props("outline")
                    for digit in range(10)
                ]
            self.details = ui.label("").classes("text-xs text-gray-500")
            self.save_status = testid(ui.label("").classes("text-sm"), "save-status")

    def _build_server_banner(self) -> None:
        with ui.card().classes("w-full bg-red-100 border border-red-400") as self.server_banner:
            ui.label("The model server is not reachable.").classes("font-bold text-red-800")
            self.server_error = ui.label("").classes("text-sm text-red-800")
            ui.label("Your drawing is kept: retry once the server is back.").classes("text-sm")
            testid(ui.button("Retry", icon="refresh", on_click=self.retry), "retry-button")
        testid(self.server_banner, "server-banner").set_visibility(False)

    async def on_drawing_changed(self, snapshot: Snapshot) -> None:
        if snapshot.is_empty:
            self.last_png = None
            self._start_new_drawing(NOTHING_DRAWN_HINT)
            return
        if snapshot.is_a_dot:  # not sent: any digit the model named would be a guess
            self.last_png = None
            self._drop_answers_due()
            self._show_no_answer()
            self.hint.set_text(DOT_HINT)
            return
        self.last_png = snapshot.png
        await self.predict(snapshot.png)

    async def undo(self, key: str) -> None:
        """Undo the last stroke of drawing `key`; nothing more once Clear has started another."""
        snapshot = await self.canvas.undo()
        if key == self.drawing_key:
            await self.on_drawing_changed(snapshot)

    def clear(self) -> None:
        self.canvas.clear()
        self.last_png = None
        self._start_new_drawing(EMPTY_HINT)

    async def retry(self) -> None:
        if self.last_png is None:
            self.hint.set_text(NOTHING_DRAWN_HINT)
            return
        await self.predict(self.last_png)

    async def predict(self, png: bytes) -> None:
        """Ask TorchServe about the newest drawing, show the answer, save it. One call at a time
        per page: strokes drawn while TorchServe answers are folded into one call about the
        newest, and the answer about an older drawing is not shown."""
        self.sequence += 1
        self.wanted_png = png
        self.hint.set_text("Predicting…")
        if self.predicting:
            return
        self.predicting = True
        try:
            while self.wanted_png is not None:
                png, self.wanted_png = self.wanted_png, None
                await self._predict(png, self.sequence)
        finally:
            self.predicting = False

    async def _predict(self, png: bytes, sequence: int) -> None:
        started = time.perf_counter()
        try:
            answer = await self.services.ask_model(self.services.model_client.predict, png)
        except InputRejectedError as error:
            metrics.TORCHSERVE_ERRORS.labels(metrics.error_kind(error)).inc()
            if sequence == self.sequence:
                self._show_no_answer()
                self.hint.set_text(f"The model server refused this drawing: {error.message}")
            return
        except TorchServeError as error:
            metrics.TORCHSERVE_ERRORS.labels(metrics.error_kind(error)).inc()
            if sequence == self.sequence:
                self._show_no_answer()
                self._show_server_down(error)
            return
        latency_ms = (time.perf_counter() - started) * 1000
        metrics.PREDICTION_LATENCY.observe(latency_ms / 1000)
        metrics.PREDICTIONS.labels(str(answer.get("digit"))).inc()
        if sequence != self.sequence:
            return
        self.server_banner.set_visibility(False)
        self.hint.set_text("Keep drawing, or click the true label below.")
        draft = replace(
            _draft_from_answer(self.drawing_key, answer, png, latency_ms), true_label=self.label
        )
        if self.draft is not None:  # the drawing keeps the time of its first answer
            draft = replace(draft, timestamp=self.draft.timestamp)
        self.draft = draft
        self._show_answer(draft, answer)
        self.confidence.show(answer, png)
        view = await self._model_view(png)
        if sequence == self.sequence:
            self.model_view.set_source(data_url(view) if view else "")
        await self._save(draft)
        if self.services.shadow_version:
            self.shadow_wanted = draft
            if not self.shadow_running:
                self.shadow_running = True
                background_tasks.create(self._shadow_newest(), name="shadow prediction")

    async def _shadow_newest(self) -> None:
        """Ask the candidate about the newest drawing until none is waiting: strokes drawn while
        it answers are folded into one call, so a slow candidate cannot pile up work."""
        try:
            while self.shadow_wanted is not None:
                draft, self.shadow_wanted = self.shadow_wanted, None
                await self._shadow(draft)
        finally:
            self.shadow_running = False

    async def _shadow(self, draft: PredictionDraft) -> None:
        """Ask the candidate version about the same drawing and store its answer beside the live
        one. Off the person's path: the live answer is already shown, the call runs on the
        candidate's own threads (`AppServices.shadow_executor`), and a failure is logged,
        never shown."""
        version = self.services.shadow_version
        ask = partial(self.services.model_client.predict, draft.image_data, version=version)
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self.services.shadow_executor, ask
            )
        except TorchServeError as error:
            metrics.SHADOW_ANSWERS.labels("failed").inc()
            log.info("shadow prediction by version %s failed: %s", version, error)
            return
        agreed = int(answer["digit"]) == draft.predicted_digit
        metrics.SHADOW_ANSWERS.labels("agreed" if agreed else "disagreed").inc()
        current = self._newest_state(draft.key)
        if current is None or current.image_data != draft.image_data:
            return  # the person drew on; the newer drawing gets its own shadow answer
        answered = replace(
            current,
            shadow_version=str(answer.get("model_version", version)),
            shadow_digit=int(answer["digit"]),
            shadow_confidence=_probability(answer["confidence"]),
        )
        if current is self.draft:
            self.draft = answered
        else:
            self.previous_draft = answered
        await self._save(answered, with_label=False)

    def _newest_state(self, key: str) -> PredictionDraft | None:
        """This page's newest state of drawing `key`: the one on the canvas or the one cleared."""
        for draft in (self.draft, self.previous_draft):
            if draft is not None and draft.key == key:
                return draft
        return None

    async def confirm_label(self, digit: int) -> None:
        """Label the drawing on the canvas; saved with its newest answer, or once it has one."""
        if self.last_png is None:
            self.hint.set_text("Draw a digit first, then click what it really is.")
            return
        self.label = digit
        metrics.LABELS.labels(str(digit)).inc()
        self._highlight_label(digit)
        if self.draft is None or self.draft.image_data != self.last_png:
            self.hint.set_text(LABEL_WAITS_TEXT.format(digit=digit))
            return
        self.draft = replace(self.draft, true_label=digit)
        await self._save(self.draft)

    async def _save(self, draft: PredictionDraft, *, with_label: bool = True) -> None:
        """Save even if the canvas was cleared meanwhile; report only on the current drawing.

        What is written is the page's newest state of the drawing when its turn comes, so a
        save asked for earlier (the answer's, behind "what the model saw") never writes over a
        label or a later stroke saved before it. Without `with_label` (the candidate's answer,
        not the person's doing) the row keeps the label it has, given here or on History."""
        async with self.save_lock:
            draft = self._newest_state(draft.key) or draft
            written = draft if with_label else replace(draft, true_label=None)
            outcome = await run.io_bound(self.services.store.save, written)
        if draft.key != self.drawing_key:
            return
        self.waiting_for_database = outcome is SaveOutcome.PENDING
        self._show_save_status(draft)

    def _check_pending_save(self) -> None:
        """Tell the person once the outbox has delivered their drawing."""
        if not self.waiting_for_database or self.draft is None:
            return
        if not self.services.store.is_pending(self.draft.key):
            self.waiting_for_database = False
            self._show_save_status(self.draft)

    def _show_save_status(self, draft: PredictionDraft) -> None:
        if self.waiting_for_database:
            self.save_status.set_text(PENDING_TEXT)
            self.save_status.classes(replace="text-sm text-orange-700 font-bold")
            return
        if self.services.store.is_deleted(draft.key):
            self.save_status.set_text(DELETED_TEXT)
            self.save_status.classes(replace="text-sm text-orange-700")
            return
        row_id = self.services.store.row_id(draft.key)
        labelled = "" if draft.true_label is None else f", true label {draft.true_label}"
        self.save_status.set_text(f"Saved as #{row_id}{labelled}.")
        self.save_status.classes(replace="text-sm text-green-700")

    def _show_server_down(self, error: Exception) -> None:
        log.warning("prediction failed: %s", error)
        self.server_error.set_text(_server_problem(error))
        self.server_banner.set_visibility(True)
        self.hint.set_text("No prediction: the model server is not reachable.")

    def _show_answer(self, draft: PredictionDraft, answer: dict[str, Any]) -> None:
        self.digit_label.set_text(str(draft.predicted_digit))
        self.confidence_label.set_text(f"{draft.confidence:.1%}")
        self.chart.options.update(_chart_options(answer.get("probabilities") or [0.0] * 10))
        self.chart.update()
        self.details.set_text(f"model {draft.model_version} · {draft.latency_ms:.0f} ms round trip")
        self._highlight_label(self.label)

    async def _ask_explanation(self, png: bytes) -> dict[str, Any]:
        return await self.services.ask_model(self.services.model_client.explain, png)

    async def _model_view(self, png: bytes) -> bytes | None:
        try:
            return await run.io_bound(model_view_png, png)
        except InvalidInputError:
            return None

    def _highlight_label(self, digit: int | None) -> None:
        for index, button in enumerate(self.label_buttons):
            if index == digit:
                button.props(remove="outline")
            else:
                button.props("outline")

    def _drop_answers_due(self) -> None:
        """Neither the answer under way nor a drawing waiting to be asked about is shown."""
        self.sequence += 1
        self.wanted_png = None

    def _start_new_drawing(self, hint: str) -> None:
        self._drop_answers_due()
        self.previous_draft = self.draft or self.previous_draft
        self.draft = None
        self.label = None
        self.drawing_key = uuid.uuid4().hex
        self.waiting_for_database = False
        self.hint.set_text(hint)
        self.save_status.set_text("")
        self._show_no_answer()
        self._highlight_label(None)

    def _show_no_answer(self) -> None:
        """Blank the result: an older drawing's answer must not pass for the canvas's."""
        self.digit_label.set_text("–")
        self.confidence_label.set_text("–")
        self.details.set_text("")
        self.model_view.set_source("")
        self.confidence.reset()
        self.chart.options.update(_chart_options([0.0] * 10))
        self.chart.update()


def _draft_from_answer(
    key: str, answer: dict[str, Any], png: bytes, latency_ms: float
) -> PredictionDraft:
    return PredictionDraft(
        key=key,
        timestamp=utc_now(),
        predicted_digit=int(answer["digit"]),
        confidence=_probability(answer["confidence"]),
        image_data=png,
        model_version=str(answer.get("model_version", "unknown")),
        latency_ms=latency_ms,
    )


def _probability(value: Any) -> float:
    """A confidence clamped to 0-1: float32 softmax can overshoot 1 by an ulp, and the
    database's CHECK would refuse it."""
    return min(max(float(value), 0.0), 1.0)


def _server_problem(error: Exception) -> str:
    """What went wrong, for the page; the error itself (with addresses) goes to the log."""
    if isinstance(error, AuthorizationError):
        return "It refused the app's access token."
    if isinstance(error, ServerUnavailableError):
        return "It is down or did not answer in time."
    return "It answered with an error."


def _chart_options(probabilities: list[float]) -> dict[str, Any]:
    return {
        "animation": False,
        "grid": {"left": 36, "right": 8, "top": 8, "bottom": 24},
        "xAxis": {"type": "category", "data": [str(digit) for digit in range(10)]},
        "yAxis": {"type": "value", "min": 0, "max": 1},
        "series": [{"type": "bar", "data": [round(float(p), 4) for p in probabilities]}],
        "tooltip": {"trigger": "axis"},
    }
