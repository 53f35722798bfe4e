"""`make run`'s entry point: starts everything, reports ready, stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from deploy.local.stack import free_port, port_open
from tests.conftest import Backend


def test_run_starts_the_suite_and_ctrl_c_stops_every_process(
    tmp_path: Path, backend: Backend, embedded_redis_url: str
) -> None:
    ports = [free_port() for _ in range(7)]
    env = {
        **os.environ,
        "TUIKE_VAR_DIR": str(tmp_path / "var"),
        "TUIKE_GATEWAY_PORT": str(ports[0]),
        "TUIKE_SERVICE_PORTS": ",".join(map(str, ports[1:5])),
        "TUIKE_BROKER_PORT": str(ports[5]),
        "TUIKE_EMBEDDED_REDIS_PORT": str(ports[6]),
        "TUIKE_REDIS_KEY_PREFIX": "tuike-make-run-test:",
        "TUIKE_REDIS_URL": backend.redis_url or embedded_redis_url,
    }
    env.pop("TUIKE_MYSQL_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.local.run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            output.append(line)
            if "Press Ctrl-C to stop." in line or process.poll() is not None:
                break
        text = "".join(output)
        assert "Tuike is up." in text, text
        assert f"http://127.0.0.1:{ports[0]}" in text
        ready = httpx.get(f"http://127.0.0.1:{ports[0]}/readyz", timeout=10)
        assert ready.status_code == 200
        assert set(ready.json()["checks"].values()) == {"ok"}
        assert (tmp_path / "var" / "user.db").exists()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert process.returncode == 0
    for port in ports[:6]:
        assert not port_open("127.0.0.1", port), f"port {port} still held"
