"""The image: a multi-stage, slim, non-root Dockerfile whose entrypoint (deploy/container.py)
turns a command into the right process; the entrypoint's commands run for real here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from deploy.container import SERVICES, UsageError, plan
from deploy.local.stack import Stack, free_port

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    # Join continuation lines and drop comments and heredoc bodies.
    text = re.sub(r"<<'PY'.*?\nPY\n", "\n", text, flags=re.S)
    text = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_is_multi_stage_slim_non_root_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    final = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"][-1]
    runtime = instructions[final:]
    keywords = [keyword for keyword, _ in runtime]
    user = [rest for keyword, rest in runtime if keyword == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in keywords
    assert ("ENTRYPOINT", '["python", "-m", "deploy.container"]') in runtime
    # the runtime stage takes only the built virtualenv: no compilers, no sources of the build
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies == ["--from=build /opt/tuike /opt/tuike"]
    assert not any("build-essential" in rest for keyword, rest in runtime if keyword == "RUN")
    build = instructions[:final]
    assert any("requirements.lock" in rest for keyword, rest in build if keyword == "RUN")
    assert any("pip install --no-deps ." in rest for keyword, rest in build if keyword == "RUN")
    for keyword, rest in build:
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "var", "tests"):
        assert path in ignored


def test_commands_map_to_processes() -> None:
    assert plan(["gateway"]) == ("module", ["gateway"])
    for service in SERVICES:
        assert plan([service]) == ("module", [f"services.{service}", "serve"])
        assert plan([service, "worker"]) == ("worker", [service])
        assert plan([service, "migrate"]) == ("migrate", [service])
        assert plan([service, "replay-dead-letters"]) == (
            "module",
            [f"services.{service}", "replay-dead-letters"],
        )
    assert plan(["migrate"]) == ("migrate", list(SERVICES))
    assert plan(["migrate", "order"]) == ("migrate", ["order"])
    assert plan(["reconcile"]) == ("reconcile", [])
    assert plan(["stats-rebuild"]) == ("module", ["services.stats.rebuild"])
    assert plan(["stats-rebuild", "--metric", "commission"]) == (
        "module",
        ["services.stats.rebuild", "--metric", "commission"],
    )
    for bad in ([], ["billing"], ["user", "dance"], ["migrate", "billing"], ["gateway", "x"]):
        with pytest.raises(UsageError):
            plan(bad)


def run_entrypoint(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.container", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


async def test_migrate_command_creates_the_service_tables(database_url: str) -> None:
    env = {"TUIKE_USER_DATABASE_URL": database_url}
    env.pop("TUIKE_DATABASE_URL", None)
    result = run_entrypoint("migrate", "user", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert {"outbox", "inbox"} <= tables, tables
    # migrations are idempotent: a second run (the next release's Job) succeeds
    assert run_entrypoint("migrate", "user", env=env).returncode == 0


def test_migrate_without_a_database_url_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUIKE_")}
    result = subprocess.run(
        [sys.executable, "-m", "deploy.container", "migrate", "order", "stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "TUIKE_ORDER_DATABASE_URL" in result.stderr
    assert run_entrypoint("billing").returncode == 2


def test_healthcheck_command_follows_the_process(stack: Stack) -> None:
    assert run_entrypoint("healthcheck", f"{stack.gateway_url}/readyz").returncode == 0
    assert run_entrypoint("healthcheck", f"http://127.0.0.1:{free_port()}/healthz").returncode == 1


def test_jobs_refuse_to_run_without_the_internal_key(stack: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TUIKE_INTERNAL_API_KEY"}
    env["TUIKE_COMMISSION_SERVICE_URL"] = stack.service_url("commission")
    result = subprocess.run(
        [sys.executable, "-m", "deploy.container", "reconcile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "TUIKE_INTERNAL_API_KEY" in result.stderr


def test_worker_command_exports_metrics(
    database_url: str, broker: str, redis_url: str, key_prefix: str
) -> None:
    env = {
        "TUIKE_DATABASE_URL": database_url,
        "TUIKE_REDIS_URL": redis_url,
        "TUIKE_REDIS_KEY_PREFIX": key_prefix,
        "TUIKE_KAFKA_BOOTSTRAP_SERVERS": broker,
        "TUIKE_KAFKA_ENABLE_IDEMPOTENCE": "false",
    }
    assert run_entrypoint("stats", "migrate", env=env).returncode == 0
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "deploy.container", "stats", "worker"],
        env={**os.environ, **env, "TUIKE_METRICS_PORT": str(port), "TUIKE_HOST": "127.0.0.1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert worker.poll() is None, f"worker exited with {worker.returncode}"
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if "promoter_message_queue_size{" in text:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the worker never reported its queues"
            time.sleep(0.3)
        assert "promoter_messages_consumed_total" in text
    finally:
        worker.terminate()
        worker.wait(timeout=30)
