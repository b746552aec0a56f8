"""The drawing canvas: a custom NiceGUI element backed by `canvas.js`."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nicegui import ui
from nicegui.events import GenericEventArguments

PNG_DATA_URL_PREFIX = "data:image/png;base64,"
#: A drawing shorter than this many pen widths is a dot (a click or a tap, 1.0), not a digit:
#: the model would still read one as some digit, confidently.
MIN_EXTENT_IN_PENS = 1.5


@dataclass(frozen=True)
class Snapshot:
    """The canvas after a change: how many strokes and, unless empty, its PNG and its longer
    side in pen widths (None when the browser did not say)."""

    strokes: int
    png: bytes | None
    extent: float | None = None

    @property
    def is_empty(self) -> bool:
        return self.strokes == 0 or not self.png

    @property
    def is_a_dot(self) -> bool:
        return self.extent is not None and self.extent < MIN_EXTENT_IN_PENS

    @classmethod
    def from_js(cls, data: dict[str, Any] | None) -> Snapshot:
        data = data or {}
        url = data.get("png") or ""
        png = (
            base64.b64decode(url[len(PNG_DATA_URL_PREFIX) :])
            if url.startswith(PNG_DATA_URL_PREFIX)
            else None
        )
        extent = data.get("extent")
        return cls(
            strokes=int(data.get("strokes") or 0),
            png=png,
            extent=float(extent) if isinstance(extent, int | float) else None,
        )


class DrawingCanvas(ui.element, component="canvas.js"):
    """Emits a `Snapshot` after every finished stroke; `undo`/`clear` return the new one."""

    def __init__(
        self,
        *,
        size: int = 280,
        stroke_width: int = 18,
        on_stroke: Callable[[Snapshot], Any] | None = None,
    ) -> None:
        super().__init__()
        self._props["size"] = size
        self._props["strokeWidth"] = stroke_width
        if on_stroke is not None:
            self.on("stroke", lambda event: _call_with_snapshot(on_stroke, event))

    def set_stroke_width(self, width: int) -> None:
        self._props["strokeWidth"] = int(width)
        self.update()

    async def undo(self) -> Snapshot:
        return Snapshot.from_js(await self.run_method("undo"))

    def clear(self) -> None:
        self.run_method("clear")


def _call_with_snapshot(handler: Callable[[Snapshot], Any], event: GenericEventArguments) -> Any:
    return handler(Snapshot.from_js(event.args))
