"""The container image's entrypoint: one image, the command picks the process.

``python -m deploy.container <command> [args]`` (the Dockerfile's ENTRYPOINT):

- ``gateway`` — the API gateway;
- ``user|order|commission|stats [serve|worker|migrate|replay-dead-letters]`` — one service
  process (``serve`` is the default; ``worker`` runs the outbox relay, consumers and
  schedulers without HTTP and exports its metrics on ``TUIKE_METRICS_PORT``, default 9100;
  ``replay-dead-letters`` applies the service's stored dead letters again);
- ``migrate [service ...]`` — migrate the named services (default: all four), each with its
  database from ``TUIKE_<SERVICE>_DATABASE_URL`` (or ``TUIKE_DATABASE_URL`` when only one);
- ``reconcile`` — ask the commission service to verify the ledger (CronJob); exits 1 when the
  ledger does not verify, so the Job shows as failed;
- ``stats-rebuild [args]`` — rebuild the leaderboards from ``promoter_stats``
  (``python -m services.stats.rebuild``, with the stats service's settings; CronJob);
- ``healthcheck [url]`` — exit 0 when ``/healthz`` of this container answers 200 (the image
  has no curl).
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from collections.abc import Mapping, Sequence

SERVICES = ("user", "order", "commission", "stats")
SERVICE_COMMANDS = ("serve", "worker", "migrate", "replay-dead-letters")
DEFAULT_WORKER_METRICS_PORT = 9100
USAGE = (
    "usage: python -m deploy.container "
    "gateway | {user,order,commission,stats} [serve|worker|migrate|replay-dead-letters] | "
    "migrate [service ...] | "
    "reconcile | stats-rebuild [args] | healthcheck [url]"
)


class UsageError(ValueError):
    pass


def plan(argv: Sequence[str]) -> tuple[str, list[str]]:
    """What a container command runs: ``(kind, arguments)``.

    kind is ``module`` (run ``python -m <arguments[0]> <arguments[1:]>``), ``migrate``
    (arguments = services), ``worker`` (arguments = [service]) or a job name.
    """
    if not argv:
        raise UsageError(USAGE)
    command, rest = argv[0], list(argv[1:])
    if command == "gateway" and not rest:
        return "module", ["gateway"]
    if command in SERVICES:
        action = rest[0] if rest else "serve"
        if action not in SERVICE_COMMANDS or len(rest) > 1:
            raise UsageError(USAGE)
        if action == "worker":
            return "worker", [command]
        if action == "migrate":
            return "migrate", [command]
        return "module", [f"services.{command}", action]
    if command == "migrate":
        unknown = [name for name in rest if name not in SERVICES]
        if unknown:
            raise UsageError(f"unknown services {unknown}; {USAGE}")
        return "migrate", rest or list(SERVICES)
    if command == "reconcile" and not rest:
        return command, []
    if command == "stats-rebuild":
        return "module", ["services.stats.rebuild", *rest]
    if command == "healthcheck" and len(rest) <= 1:
        return "healthcheck", rest
    raise UsageError(USAGE)


def database_url_for(service: str, env: Mapping[str, str], only_one: bool) -> str:
    """A service's database for ``migrate``: ``TUIKE_<SERVICE>_DATABASE_URL``, else (one
    service) ``TUIKE_DATABASE_URL``."""
    specific = env.get(f"TUIKE_{service.upper()}_DATABASE_URL")
    if specific:
        return specific
    if only_one and env.get("TUIKE_DATABASE_URL"):
        return env["TUIKE_DATABASE_URL"]
    raise UsageError(f"set TUIKE_{service.upper()}_DATABASE_URL to migrate {service}")


def _run_module(module: str, args: list[str]) -> None:
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _migrate(services: list[str]) -> int:
    # Each service migrates in its own process so their settings never mix.
    for service in services:
        env = dict(os.environ)
        env["TUIKE_DATABASE_URL"] = database_url_for(service, env, len(services) == 1)
        env["TUIKE_SERVICE_NAME"] = service
        code = subprocess.call([sys.executable, "-m", f"services.{service}", "migrate"], env=env)
        if code != 0:
            print(f"migrating {service} failed with exit code {code}", file=sys.stderr)
            return code
    return 0


def _worker(service: str) -> None:
    from prometheus_client import start_http_server

    # A worker serves no HTTP of its own; Prometheus scrapes its lag and DLQ counts here.
    port = int(os.environ.get("TUIKE_METRICS_PORT", DEFAULT_WORKER_METRICS_PORT))
    start_http_server(port, addr=os.environ.get("TUIKE_HOST", "0.0.0.0"))
    _run_module(f"services.{service}", ["worker"])


def _admin_call(method: str, url: str) -> int:
    import httpx

    key = os.environ.get("TUIKE_INTERNAL_API_KEY")
    if not key:
        print("TUIKE_INTERNAL_API_KEY is not set", file=sys.stderr)
        return 2
    response = httpx.request(method, url, headers={"Authorization": f"Bearer {key}"}, timeout=600.0)
    print(response.text)
    if response.status_code >= 400:
        return 1
    body = response.json() if response.content else {}
    # The ledger verification answers 200 with ok=false when it finds a problem.
    if isinstance(body, dict) and body.get("ok") is False:
        return 1
    return 0


def _healthcheck(url: str | None) -> int:
    import httpx

    port = os.environ.get("TUIKE_PORT", "8000")
    try:
        response = httpx.get(url or f"http://127.0.0.1:{port}/healthz", timeout=3.0)
    except httpx.HTTPError:
        return 1
    return 0 if response.status_code == 200 else 1


def main(argv: Sequence[str]) -> int:
    try:
        kind, args = plan(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    if kind == "module":
        # The module's own exit status (SystemExit) leaves through here unchanged.
        _run_module(args[0], args[1:])
        return 0
    if kind == "worker":
        _worker(args[0])
        return 0
    if kind == "migrate":
        try:
            return _migrate(args)
        except UsageError as exc:
            print(exc, file=sys.stderr)
            return 2
    if kind == "reconcile":
        base = os.environ.get("TUIKE_COMMISSION_SERVICE_URL", "http://commission:8003")
        return _admin_call("GET", f"{base.rstrip('/')}/api/v1/ledger/verify")
    return _healthcheck(args[0] if args else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
