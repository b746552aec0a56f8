"""`python -m serving.models list | promote VERSION | rollback`: the versions TorchServe serves.

TorchServe serves every archive of the model in the store (`model.versions`); these commands
change which one answers ``/predictions/<model>``, through the management API and its token
(TorchServe allows it with the model API off: nothing can be registered or deleted). Each
change is recorded in the store, so a restart keeps it; the app picks it up with its next
prediction.
"""

from __future__ import annotations

import argparse
import sys

from config import Settings, get_settings
from model import versions
from serving.client import TorchServeClient, TorchServeError


def describe(client: TorchServeClient) -> list[str]:
    """One line per served version: default or not, workers ready."""
    default = client.model_info()["version"]  # the description of the model without a version
    lines = []
    for model in sorted(client.versions(), key=lambda m: versions.version_key(m["modelVersion"])):
        workers = model.get("workers") or []
        ready = sum(worker.get("status") == "READY" for worker in workers)
        mark = "*" if model["modelVersion"] == default else " "
        lines.append(f"{mark} {model['modelVersion']}  {ready}/{len(workers)} workers ready")
    return lines


def promote(client: TorchServeClient, settings: Settings, version: str) -> None:
    store, name = settings.model_store, settings.model_name
    with versions.changing_default(store, name):
        served = {model["modelVersion"] for model in client.versions()}
        if version not in served:
            raise versions.VersionError(
                f"TorchServe does not serve {name} {version} (it serves "
                f"{', '.join(sorted(served, key=versions.version_key))}); archive it into "
                f"{store} and restart TorchServe (`make stop serve`)"
            )
        if version not in versions.stored_versions(store, name):
            # else TorchServe would switch and the record would not follow
            raise versions.VersionError(
                f"{name} {version} is served but not in {store}: "
                "promote with MODEL_STORE set to the store TorchServe loaded it from"
            )
        client.set_default(version)
        versions.record_default(store, name, version)


def rollback(client: TorchServeClient, settings: Settings) -> str:
    with versions.changing_default(settings.model_store, settings.model_name):
        previous = versions.previous_default(settings.model_store, settings.model_name)
        client.set_default(previous)  # the record changes only once TorchServe has taken it
        versions.forget_default(settings.model_store, settings.model_name)
    return previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the served versions; * marks the default")
    chosen = commands.add_parser("promote", help="make VERSION the default")
    chosen.add_argument("version")
    commands.add_parser("rollback", help="make the previous default the default again")
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        with TorchServeClient(settings) as client:
            if args.command == "promote":
                promote(client, settings, args.version)
                print(f"{settings.model_name} {args.version} is the default now.")
            elif args.command == "rollback":
                print(f"{settings.model_name} {rollback(client, settings)} is the default again.")
            print("\n".join(describe(client)))
    except (TorchServeError, versions.VersionError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
