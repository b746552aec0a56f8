"""The frame every page shares: title and navigation."""

from __future__ import annotations

from nicegui import ui
from nicegui.client import ClientConnectionTimeout

#: How long a page that was sent waits for its browser to connect before it gives up (and is
#: cleaned up): pages that wait on TorchServe or the database do so only once connected.
CONNECT_TIMEOUT_S = 30.0
PAGES = [("/", "Draw"), ("/history", "History"), ("/statistics", "Statistics")]


def page_frame(active: str) -> None:
    """Header with links to the three pages; `active` is the current path."""
    ui.page_title("MNIST digits")
    with ui.header().classes("items-center gap-6 bg-slate-800"):
        ui.label("MNIST digits").classes("text-lg font-bold")
        for path, title in PAGES:
            link = testid(ui.link(title, path), f"nav-{title.lower()}")
            link.classes("text-white no-underline")
            if path == active:
                link.classes("font-bold underline")


async def browser_connected() -> bool:
    """Wait for the page's browser to connect; False when it never does (a page fetched by curl
    or a monitor, a tab closed at once) or the app stops meanwhile. That is no error: the page
    is dropped, as NiceGUI drops one that times out, and a browser that comes later reloads."""
    client = ui.context.client
    try:
        await client.connected(CONNECT_TIMEOUT_S)
    except ClientConnectionTimeout:
        client.delete()
        return False
    return not client.is_deleted


def testid(element: ui.element, name: str) -> ui.element:
    """A stable handle for tests: `data-testid` in the browser, a marker for NiceGUI's user."""
    return element.props(f'data-testid="{name}"').mark(name)
