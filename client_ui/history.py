"""The history page: every saved drawing, filterable, relabel, delete, CSV export."""

from __future__ import annotations

import logging
from collections.abc import Callable

from nicegui import run, ui
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from client_ui import queries
from client_ui.database import DATABASE_DOWN_ERRORS
from client_ui.images import data_url
from client_ui.layout import browser_connected, page_frame, testid
from client_ui.models import Prediction
from client_ui.queries import Filters
from client_ui.services import AppServices

log = logging.getLogger(__name__)

PAGE_SIZE = 20
ANY = "any"
DIGIT_OPTIONS = {ANY: "any", **{digit: str(digit) for digit in range(10)}}
CORRECTNESS_OPTIONS = {ANY: "any", "right": "right", "wrong": "wrong"}
LABEL_OPTIONS = {-1: "–", **{digit: str(digit) for digit in range(10)}}
GONE_TEXT = "Drawing #{id} was deleted meanwhile (in another tab); nothing was changed."
#: For a database error other than an outage (a missing table, say): its details go to the log.
FAILED_TEXT = "The database could not do this; the error was logged."


def register(services: AppServices) -> None:
    @ui.page("/history")
    async def history_page() -> None:
        page = HistoryPage(services)
        if await browser_connected():  # the page is sent first: the database may hang
            await page.load()


class HistoryPage:
    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.page = 0
        self.total = 0
        self.rows: list[Prediction] = []
        #: Loads started; only the newest one's answer is shown (answers may come out of order).
        self.loads = 0
        page_frame("/history")
        with ui.column().classes("w-full max-w-5xl mx-auto p-4 gap-3"):
            with ui.row().classes("items-end gap-4"):
                self.predicted_filter = self._filter("Predicted", DIGIT_OPTIONS, "filter-predicted")
                self.label_filter = self._filter("True label", DIGIT_OPTIONS, "filter-label")
                self.correct_filter = self._filter(
                    "Right/wrong", CORRECTNESS_OPTIONS, "filter-correct"
                )
                self.version_filter = self._filter("Model version", {ANY: "any"}, "filter-version")
                testid(ui.button("Export CSV", icon="download", on_click=self.export), "export-csv")
            self.error = testid(ui.label("").classes("text-red-700 font-bold"), "history-error")
            self.table = ui.column().classes("w-full gap-1")
            with ui.row().classes("items-center gap-3"):
                previous = ui.button(icon="chevron_left", on_click=lambda: self.turn(-1))
                testid(previous.props("flat"), "page-previous")
                self.page_label = testid(ui.label(""), "page-label")
                following = ui.button(icon="chevron_right", on_click=lambda: self.turn(1))
                testid(following.props("flat"), "page-next")

    def _filter(self, title: str, options: dict, name: str) -> ui.select:
        select = ui.select(options, value=ANY, label=title, on_change=self.reset_and_load)
        return testid(select.classes("w-32"), name)

    @property
    def filters(self) -> Filters:
        def value(select: ui.select) -> int | str | None:
            return None if select.value == ANY else select.value

        return Filters(
            predicted_digit=value(self.predicted_filter),  # type: ignore[arg-type]
            true_label=value(self.label_filter),  # type: ignore[arg-type]
            correctness=value(self.correct_filter),  # type: ignore[arg-type]
            model_version=value(self.version_filter),  # type: ignore[arg-type]
        )

    async def reset_and_load(self) -> None:
        self.page = 0
        await self.load()

    async def turn(self, step: int) -> None:
        last_page = max(0, (self.total - 1) // PAGE_SIZE)
        self.page = min(max(0, self.page + step), last_page)
        await self.load()

    async def load(self) -> None:
        self.loads += 1
        load, filters, page = self.loads, self.filters, self.page
        try:
            answer = await run.io_bound(
                self.services.database.call, lambda session: self._fetch(session, filters, page)
            )
        except DATABASE_DOWN_ERRORS:
            if load == self.loads:
                self.error.set_text("The database is unreachable; try again in a moment.")
            return
        except SQLAlchemyError:
            log.exception("loading the history failed")
            if load == self.loads:
                self.error.set_text(FAILED_TEXT)
            return
        if load != self.loads:
            return
        self.page, self.total, self.rows, known_versions = answer
        self.error.set_text("")
        versions = {ANY: "any", **{version: version for version in known_versions}}
        if versions != self.version_filter.options:
            chosen = self.version_filter.value
            self.version_filter.set_options(versions, value=chosen if chosen in versions else ANY)
        self._render()

    @staticmethod
    def _fetch(
        session: Session, filters: Filters, page: int
    ) -> tuple[int, int, list[Prediction], list[str]]:
        """The page asked for, or the last one when rows deleted meanwhile took it away."""
        total = queries.count_predictions(session, filters)
        page = min(page, max(0, (total - 1) // PAGE_SIZE))
        rows = queries.list_predictions(session, filters, offset=page * PAGE_SIZE, limit=PAGE_SIZE)
        return page, total, rows, queries.model_versions(session)

    def _render(self) -> None:
        pages = max(1, -(-self.total // PAGE_SIZE))
        noun = "drawing" if self.total == 1 else "drawings"
        self.page_label.set_text(f"Page {self.page + 1} of {pages} · {self.total} {noun}")
        self.table.clear()
        with self.table:
            if not self.rows:
                ui.label("No drawings match.").classes("text-gray-500")
            for row in self.rows:
                self._render_row(row)

    def _render_row(self, row: Prediction) -> None:
        with ui.row().classes("w-full items-center gap-4 border-b py-1") as line:
            testid(line, f"row-{row.id}")
            ui.image(data_url(row.image_data)).classes("w-14 h-14 border")
            ui.label(f"#{row.id}").classes("w-12")
            ui.label(row.timestamp_utc.strftime("%Y-%m-%d %H:%M:%S UTC")).classes("w-48 text-sm")
            ui.label(f"predicted {row.predicted_digit}").classes("w-24")
            ui.label(f"{row.confidence:.1%}").classes("w-16")
            ui.label(f"v{row.model_version}").classes("w-32 text-xs text-gray-500 truncate")
            label = ui.select(
                LABEL_OPTIONS,
                value=-1 if row.true_label is None else row.true_label,
                label="true label",
                on_change=lambda event, listed=row: self.relabel(listed, event.value),
            ).classes("w-24")
            testid(label, f"relabel-{row.id}")
            ui.label(_verdict(row)).classes("w-14")
            remove = ui.button(icon="delete", on_click=lambda _, listed=row: self.confirm(listed))
            testid(remove.props("flat color=negative"), f"delete-{row.id}")

    async def relabel(self, row: Prediction, value: int) -> None:
        label = None if value == -1 else value
        await self._change(queries.set_true_label, row, label)

    async def confirm(self, row: Prediction) -> None:
        """Ask first: a deleted drawing and its label are gone for good."""
        with ui.dialog() as dialog, ui.card():
            ui.label(f"Delete drawing #{row.id} and its label? This cannot be undone.")
            with ui.row():
                ui.button("Cancel", on_click=lambda: dialog.submit(False)).props("flat")
                delete = ui.button("Delete", on_click=lambda: dialog.submit(True))
                testid(delete.props("color=negative"), "confirm-delete")
        if await dialog:
            await self._change(queries.delete_prediction, row)
        dialog.clear()

    async def _change(self, change: Callable[..., bool], row: Prediction, *args: object) -> None:
        try:
            done = await run.io_bound(
                self.services.database.call, lambda session: change(session, row, *args)
            )
        except DATABASE_DOWN_ERRORS:
            ui.notify("The database is unreachable; nothing was changed.", type="negative")
            return
        except SQLAlchemyError:
            log.exception("changing drawing #%s failed", row.id)
            ui.notify(FAILED_TEXT, type="negative")
            return
        if not done:
            ui.notify(GONE_TEXT.format(id=row.id), type="warning")
        await self.load()

    async def export(self) -> None:
        filters = self.filters
        try:
            text = await run.io_bound(
                self.services.database.call, lambda session: queries.export_csv(session, filters)
            )
        except DATABASE_DOWN_ERRORS:
            ui.notify("The database is unreachable; try again in a moment.", type="negative")
            return
        except SQLAlchemyError:
            log.exception("the CSV export failed")
            ui.notify(FAILED_TEXT, type="negative")
            return
        ui.download.content(text.encode("utf-8"), "predictions.csv", "text/csv")


def _verdict(row: Prediction) -> str:
    if row.true_label is None:
        return ""
    return "right" if row.true_label == row.predicted_digit else "wrong"
