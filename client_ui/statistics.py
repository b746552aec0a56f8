"""The statistics page: how right the model is on labelled drawings, and the server's state."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nicegui import run, ui
from sqlalchemy.exc import SQLAlchemyError

from client_ui import queries
from client_ui.database import DATABASE_DOWN_ERRORS
from client_ui.layout import browser_connected, page_frame, testid
from client_ui.queries import ROLLING_WINDOW, TIMELINE_POINTS, ShadowComparison, Statistics
from client_ui.services import AppServices
from client_ui.status import ServerStatus, fetch_status

log = logging.getLogger(__name__)

DIGIT_NAMES = [str(digit) for digit in range(10)]


def register(services: AppServices) -> None:
    @ui.page("/statistics")
    async def statistics_page() -> None:
        page_frame("/statistics")
        with ui.column().classes("w-full max-w-6xl mx-auto p-4 gap-4"):
            status_panel = testid(ui.card().classes("w-full"), "status-panel")
            with status_panel:
                waiting = ui.label("Asking the model server…").classes("text-gray-500")
            content = ui.column().classes("w-full gap-4")
            with content:
                loading = ui.label("Loading statistics…").classes("text-gray-500")
        # The page is sent first and filled as the answers come: either side may hang.
        if not await browser_connected():
            return
        await asyncio.gather(
            _fill_status(status_panel, waiting, services),
            _fill_statistics(content, loading, services),
        )


async def _fill_status(panel: ui.card, waiting: ui.label, services: AppServices) -> None:
    status = await run.io_bound(fetch_status, services.status)
    if status is None:  # NiceGUI cancels io_bound work when the app stops
        return
    waiting.delete()
    with panel:
        _status_panel(status)


async def _fill_statistics(content: ui.column, loading: ui.label, services: AppServices) -> None:
    try:
        stats = await run.io_bound(services.database.call, queries.compute_statistics)
    except DATABASE_DOWN_ERRORS:
        _show_problem(loading, "The database is unreachable; statistics will be back with it.")
        return
    except SQLAlchemyError:  # a missing table, say: the page must not stay "Loading" for ever
        log.exception("the statistics could not be read")
        _show_problem(loading, "The statistics could not be read; the error was logged.")
        return
    loading.delete()
    with content:
        _counts(stats)
        with ui.row().classes("w-full gap-4"):  # two cards side by side, wrapped on a phone
            _per_digit_chart(stats)
            _confusion_matrix(stats)
        with ui.row().classes("w-full gap-4"):
            _accuracy_over_time(stats)
            _confidence_chart(stats)
        with ui.row().classes("w-full gap-4"):
            _versions_table(stats)
            _accuracy_per_day_by_version(stats)
        for shadow in reversed(stats.shadows.values()):  # the newest candidate first
            _shadow_comparison(shadow)


def _show_problem(loading: ui.label, text: str) -> None:
    """In place of the loading label; the error itself is for the log, not the page."""
    loading.set_text(text)
    loading.classes(replace="text-red-700 font-bold")


def _status_panel(status: ServerStatus) -> None:
    ui.label("Model server").classes("text-lg font-bold")
    with ui.row().classes("gap-8"):
        colour = "text-green-700" if status.healthy else "text-red-700"
        _figure("Health", status.health_text, "ts-health", colour)
        _figure("Model version", status.model_version, "ts-model-version")
        _figure("Workers", status.workers, "ts-workers")
        for title, value in status.figures.items():
            _figure(title, f"{value:,.0f}", None)
        if status.mean_latency_ms is not None:
            _figure("Mean inference time", f"{status.mean_latency_ms:.1f} ms", "ts-latency")
    for error in status.errors:
        ui.label(error).classes("text-xs text-red-700")


def _figure(title: str, value: str, name: str | None, colour: str = "") -> None:
    with ui.column().classes("gap-0"):
        ui.label(title).classes("text-xs text-gray-500")
        label = ui.label(value).classes(f"text-xl {colour}")
        if name:
            testid(label, name)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _counts(stats: Statistics) -> None:
    with ui.card().classes("w-full"), ui.row().classes("gap-8"):
        _figure("Drawings", str(stats.total), "count-total")
        _figure("Labelled", str(stats.labelled), "count-labelled")
        _figure("Correct", str(stats.correct), "count-correct")
        _figure("Accuracy (labelled)", _percent(stats.accuracy), "accuracy-overall")
        _figure("Mean confidence, right", _percent(stats.mean_confidence_right), "confidence-right")
        _figure("Mean confidence, wrong", _percent(stats.mean_confidence_wrong), "confidence-wrong")


def _chart_card(title: str, options: dict[str, Any], name: str) -> None:
    with ui.card().classes("flex-1 min-w-[300px]"):
        ui.label(title).classes("font-bold")
        testid(ui.echart(options).classes("w-full h-64"), name)


def _per_digit_chart(stats: Statistics) -> None:
    accuracy = [stats.accuracy_per_digit(digit) for digit in range(10)]
    _chart_card(
        "Accuracy and labelled drawings per true digit",
        {
            "animation": False,
            "tooltip": {"trigger": "axis"},
            "legend": {"data": ["accuracy", "labelled"]},
            "xAxis": {"type": "category", "data": DIGIT_NAMES},
            "yAxis": [
                {"type": "value", "min": 0, "max": 1},
                {"type": "value", "minInterval": 1, "splitLine": {"show": False}},
            ],
            "series": [
                {
                    "name": "accuracy",
                    "type": "bar",
                    "data": [None if a is None else round(a, 3) for a in accuracy],
                },
                {
                    "name": "labelled",
                    "type": "line",
                    "yAxisIndex": 1,
                    "data": [stats.labelled_per_digit(digit) for digit in range(10)],
                },
            ],
        },
        "chart-per-digit",
    )


def _confusion_matrix(stats: Statistics) -> None:
    largest = max((max(row) for row in stats.confusion), default=0) or 1
    with ui.card().classes("flex-1 min-w-[300px]"):
        ui.label("Confusion matrix (rows: true label, columns: predicted)").classes("font-bold")
        with testid(ui.grid(columns=11).classes("gap-0 text-xs"), "confusion-matrix"):
            ui.label("")
            for name in DIGIT_NAMES:
                ui.label(name).classes("w-7 text-center font-bold")
            for true_digit, row in enumerate(stats.confusion):
                ui.label(str(true_digit)).classes("w-7 text-center font-bold")
                for predicted, count in enumerate(row):
                    _matrix_cell(count, largest, right=true_digit == predicted)


def _matrix_cell(count: int, largest: int, *, right: bool) -> None:
    strength = count / largest
    hue = "22, 163, 74" if right else "220, 38, 38"
    cell = ui.label(str(count) if count else "").classes("w-7 h-7 text-center leading-7")
    cell.style(f"background: rgba({hue}, {0.1 + 0.8 * strength if count else 0:.2f})")


def _accuracy_over_time(stats: Statistics) -> None:
    points = [[stamp.isoformat(), round(accuracy, 3)] for stamp, accuracy in stats.timeline]
    _chart_card(
        f"Accuracy over the last {TIMELINE_POINTS} labelled drawings"
        f" (each point: the last {ROLLING_WINDOW} up to it)",
        {
            "animation": False,
            "tooltip": {"trigger": "axis"},
            "xAxis": {"type": "time"},
            "yAxis": {"type": "value", "min": 0, "max": 1},
            "series": [{"type": "line", "data": points, "symbolSize": 6}],
        },
        "chart-over-time",
    )


def _confidence_chart(stats: Statistics) -> None:
    bins = [f"{low / 10:.1f}–{(low + 1) / 10:.1f}" for low in range(10)]
    _chart_card(
        "Confidence of right vs wrong answers",
        {
            "animation": False,
            "tooltip": {"trigger": "axis"},
            "legend": {"data": ["right", "wrong"]},
            "xAxis": {"type": "category", "data": bins},
            "yAxis": {"type": "value", "minInterval": 1},
            "series": [
                {
                    "name": "right",
                    "type": "bar",
                    "color": "#16a34a",
                    "data": stats.histogram_right,
                },
                {
                    "name": "wrong",
                    "type": "bar",
                    "color": "#dc2626",
                    "data": stats.histogram_wrong,
                },
            ],
        },
        "chart-confidence",
    )


def _versions_table(stats: Statistics) -> None:
    """Each version's drawings and accuracy: a promotion shows as a new row."""
    rows = [
        {
            "version": version,
            "drawings": record.drawings,
            "labelled": record.overall.labelled,
            "accuracy": _percent(record.overall.accuracy),
            "first": f"{min(record.days):%Y-%m-%d}" if record.days else "–",
        }
        for version, record in stats.versions.items()
    ]
    columns = [
        {"name": name, "label": label, "field": name, "align": "left"}
        for name, label in (
            ("version", "Model version"),
            ("drawings", "Drawings"),
            ("labelled", "Labelled"),
            ("accuracy", "Accuracy"),
            ("first", "First labelled (UTC)"),
        )
    ]
    with ui.card().classes("flex-1 min-w-[300px] max-w-full"):  # on a phone the table scrolls
        ui.label("By model version").classes("font-bold")
        table = ui.table(columns=columns, rows=rows, row_key="version").classes("w-full")
        testid(table, "versions-table")


def _accuracy_per_day_by_version(stats: Statistics) -> None:
    days = sorted({day for record in stats.versions.values() for day in record.days})
    series = [
        {
            "name": version,
            "type": "line",
            "connectNulls": False,
            "data": [
                None if (t := record.days.get(day)) is None else round(t.accuracy or 0, 3)
                for day in days
            ],
        }
        for version, record in stats.versions.items()
        if record.days
    ]
    _chart_card(
        "Accuracy per UTC day, by model version",
        {
            "animation": False,
            "tooltip": {"trigger": "axis"},
            "legend": {"data": [line["name"] for line in series]},
            "xAxis": {"type": "category", "data": [f"{day:%Y-%m-%d}" for day in days]},
            "yAxis": {"type": "value", "min": 0, "max": 1},
            "series": series,
        },
        "chart-per-version",
    )


def _shadow_comparison(shadow: ShadowComparison) -> None:
    """Live against one candidate on the same labelled drawings (shadow testing)."""
    with testid(ui.card().classes("w-full"), "shadow-panel"):
        version = shadow.candidate_version
        ui.label(f"Shadow test: live against candidate {version}").classes("font-bold")
        with ui.row().classes("gap-8"):
            _figure("Drawings answered by both", str(shadow.shadowed), "shadow-count")
            _figure("Where they disagree", str(shadow.disagreements), "shadow-disagreements")
            _figure("Labelled among them", str(shadow.live.labelled), "shadow-labelled")
            _figure("Live accuracy", _percent(shadow.live.accuracy), "shadow-live-accuracy")
            _figure(
                "Candidate accuracy",
                _percent(shadow.candidate.accuracy),
                "shadow-candidate-accuracy",
            )
        options = {
            "animation": False,
            "tooltip": {"trigger": "axis"},
            "legend": {"data": ["live", "candidate"]},
            "xAxis": {"type": "category", "data": DIGIT_NAMES},
            "yAxis": {"type": "value", "min": 0, "max": 1},
            "series": [
                {
                    "name": name,
                    "type": "bar",
                    "data": [None if t.accuracy is None else round(t.accuracy, 3) for t in tallies],
                }
                for name, tallies in (
                    ("live", shadow.live_per_digit),
                    ("candidate", shadow.candidate_per_digit),
                )
            ],
        }
        testid(ui.echart(options).classes("w-full h-64"), "chart-shadow-per-digit")
