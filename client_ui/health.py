"""`python -m client_ui.health`: exit 0 when the app on this machine answers (a health check).

It asks for `/metrics` through the same Host check and login as every visitor, naming the first
of the app's allowed hosts, so a check that passes means the app would serve a person too.
"""

from __future__ import annotations

import sys

import requests

from config import Settings, get_settings
from config.settings import WILDCARD_HOSTS

TIMEOUT_S = 5.0


def metrics_url(settings: Settings) -> str:
    """The app's `/metrics` at the address it listens on (loopback when it listens on all)."""
    host = "127.0.0.1" if settings.ui_host in WILDCARD_HOSTS else settings.ui_host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.ui_port}/metrics"


def main() -> int:
    settings = get_settings()
    password = settings.ui_password.get_secret_value()
    try:
        response = requests.get(
            metrics_url(settings),
            headers={"Host": settings.ui_allowed_hosts[0]},
            auth=("health", password) if password else None,
            timeout=TIMEOUT_S,
        )
    except requests.RequestException as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"unhealthy: HTTP {response.status_code}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
