"""`python -m client_ui.health`: exit 0 when the app on this machine answers (a health check).

It asks for `/metrics` through the same Host check and login as every visitor, so a check that
passes means the app would serve a person too.
"""

from __future__ import annotations

import sys

import requests

from config import get_settings

TIMEOUT_S = 5.0


def main() -> int:
    settings = get_settings()
    password = settings.ui_password.get_secret_value()
    try:
        response = requests.get(
            f"http://127.0.0.1:{settings.ui_port}/metrics",
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
