"""App setup: pages, schema at start, the outbox worker, and `ui.run` on 127.0.0.1:8000."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from fastapi import Response
from nicegui import app, run, ui

from client_ui import draw, history, metrics, statistics
from client_ui.security import AccessGuard
from client_ui.services import AppServices
from config import Settings, get_settings

log = logging.getLogger(__name__)

OUTBOX_RETRY_SECONDS = 5.0
# How often the metrics' view of the database and TorchServe's workers is refreshed: a few
# times per Prometheus scrape interval (deploy/prometheus/prometheus.yml).
WATCH_SECONDS = 5.0


def create_app(services: AppServices) -> None:
    """Register the pages, `/metrics` and the start/stop work for these services."""
    register_pages(services)
    register_metrics(services)
    register_lifecycle(services)


def register_metrics(services: AppServices) -> None:
    """`/metrics`, behind the same Host/Origin checks and login as the pages."""
    metrics.bind_outbox(services.store.pending_count)

    @app.get("/metrics", include_in_schema=False)
    def metrics_page() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


def register_pages(services: AppServices) -> None:
    app.on_page_exception(_error_page)
    draw.register(services)
    history.register(services)
    statistics.register(services)


def _error_page() -> None:
    """What a page that failed shows: no exception text, no trace (those go to the log)."""
    ui.label("Something went wrong on our side.").classes("text-xl font-bold")
    ui.label("Reload the page in a moment; the error has been logged.")
    ui.link("Back to drawing", "/")


def protect(settings: Settings) -> None:
    """Host/Origin checks and the optional password on every request, socket.io included.

    Raises `SystemExit` when the app would listen beyond this machine without a password.
    """
    password = settings.ui_password.get_secret_value()
    if settings.ui_reachable_beyond_this_machine and not password:
        raise SystemExit(
            f"refusing to listen on {settings.ui_host} and answer "
            f"{', '.join(settings.ui_allowed_hosts)} without a password: set UI_PASSWORD (the "
            "login) for an app reached beyond this machine, or keep UI_HOST=127.0.0.1 and "
            "UI_ALLOWED_HOSTS unset"
        )
    app.add_middleware(
        AccessGuard,
        allowed_hosts=settings.ui_allowed_hosts,
        password=password,
        metrics_token=settings.metrics_token.get_secret_value(),
    )


def register_lifecycle(services: AppServices) -> None:
    """Tables at start (or later, if the database is down), the outbox worker, clean stop."""
    worker: list[asyncio.Task[None]] = []

    async def start() -> None:
        worker.append(asyncio.create_task(_deliver_outbox(services)))
        worker.append(asyncio.create_task(_watch_dependencies(services)))
        await run.io_bound(services.store.ensure_schema)

    async def stop() -> None:
        for task in worker:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        services.shadow_executor.shutdown(wait=False, cancel_futures=True)
        services.model_executor.shutdown(wait=False, cancel_futures=True)
        services.database.dispose()

    app.on_startup(start)
    app.on_shutdown(stop)


async def _deliver_outbox(services: AppServices) -> None:
    """Retry pending drawings until the database takes them."""
    while True:
        await asyncio.sleep(OUTBOX_RETRY_SECONDS)
        if not services.store.pending_count():
            continue
        try:
            await run.io_bound(services.store.flush)
        except Exception:
            log.exception("could not deliver the outbox; retrying later")


async def _watch_dependencies(services: AppServices) -> None:
    """Keep the gauges of the database and of TorchServe's workers current."""
    workers_known = True
    while True:
        workers_known = await run.io_bound(_probe_dependencies, services, workers_known)
        await asyncio.sleep(WATCH_SECONDS)


def _probe_dependencies(services: AppServices, workers_were_known: bool = True) -> bool:
    """Update the gauges; returns whether TorchServe's workers are known, so that a lasting
    outage (or a cluster, where the management API is out of reach) is logged once, not every
    few seconds."""
    answers = services.database.ping()
    metrics.DATABASE_UP.set(1 if answers else 0)
    if answers:  # the tables made or migrated as soon as it answers, not at the next save
        services.store.ensure_schema()
    try:
        metrics.record_workers(services.status.model_info())
    except Exception as error:  # TorchServe down or refusing: no worker is ready for the app
        if workers_were_known:
            log.info("TorchServe's workers unknown (said again once known): %s", error)
        metrics.WORKERS_READY.set(0)
        return False
    if not workers_were_known:
        log.info("TorchServe's workers known again")
    return True


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.umask(0o077)  # the database, outbox and logs hold people's drawings: this user's only
    settings = get_settings()
    protect(settings)
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    create_app(AppServices.from_settings(settings))
    print(f"MNIST drawing app: http://{settings.ui_host}:{settings.ui_port}", flush=True)
    # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal: end quietly with 0.
    with contextlib.suppress(KeyboardInterrupt):
        ui.run(
            host=settings.ui_host,
            port=settings.ui_port,
            title="MNIST digits",
            reload=False,
            show=False,
            show_welcome_message=False,
        )


if __name__ in {"__main__", "__mp_main__"}:
    main()
