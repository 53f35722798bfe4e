"""``make run``: the whole suite on this machine, until Ctrl-C or SIGTERM.

Embedded defaults; set ``TUIKE_MYSQL_URL`` (a server URL such as
``mysql+asyncmy://root@127.0.0.1:3306``; databases ``tuike_<service>`` are created),
``TUIKE_REDIS_URL`` or ``TUIKE_KAFKA_BOOTSTRAP_SERVERS`` to use real servers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from deploy.local.stack import SERVICES, Stack, StackConfig, port_open


def config_from_env() -> StackConfig:
    var_dir = Path(os.environ.get("TUIKE_VAR_DIR", "var")).resolve()
    redis_url = os.environ.get("TUIKE_REDIS_URL")
    if not redis_url and port_open("127.0.0.1", 6379):
        redis_url = "redis://127.0.0.1:6379/0"  # a running redis-server; our keys are prefixed
    config = StackConfig(
        var_dir=var_dir,
        mysql_url=os.environ.get("TUIKE_MYSQL_URL"),
        redis_url=redis_url,
        kafka_bootstrap_servers=os.environ.get("TUIKE_KAFKA_BOOTSTRAP_SERVERS"),
        admin_key=os.environ.get("TUIKE_BOOTSTRAP_ADMIN_KEY", "dev-admin-key"),
    )
    # Port overrides, so a second stack (or a test of this command) can run beside the first.
    if "TUIKE_GATEWAY_PORT" in os.environ:
        config.gateway_port = int(os.environ["TUIKE_GATEWAY_PORT"])
    if "TUIKE_SERVICE_PORTS" in os.environ:
        ports = [int(p) for p in os.environ["TUIKE_SERVICE_PORTS"].split(",")]
        config.service_ports = dict(zip(SERVICES, ports, strict=True))
    if "TUIKE_BROKER_PORT" in os.environ:
        config.broker_port = int(os.environ["TUIKE_BROKER_PORT"])
    if "TUIKE_EMBEDDED_REDIS_PORT" in os.environ:
        config.embedded_redis_port = int(os.environ["TUIKE_EMBEDDED_REDIS_PORT"])
    if "TUIKE_REDIS_KEY_PREFIX" in os.environ:
        config.redis_key_prefix = os.environ["TUIKE_REDIS_KEY_PREFIX"]
    return config


def main() -> int:
    config = config_from_env()
    taken = [
        p
        for p in [config.gateway_port, *config.service_ports.values()]
        if port_open("127.0.0.1", p)
    ]
    if taken:
        print(f"ports {taken} are in use: is another `make run` running?", file=sys.stderr)
        return 1
    stack = Stack(config)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("starting Tuike: broker, redis, migrations, services, gateway ...", flush=True)
    try:
        stack.start()
    except Exception as exc:
        print(f"failed to start: {exc}", file=sys.stderr)
        return 1
    print(
        f"""
Tuike is up.
  gateway      {stack.gateway_url}   (API under /api/v1, readiness /readyz, metrics /metrics)
  admin key    {config.admin_key}   (use as: -H 'Authorization: Bearer {config.admin_key}')
  services     {", ".join(f"{s} {stack.service_url(s)}" for s in SERVICES)}
  broker       {stack.kafka}
  redis        {stack.redis_url} (key prefix {config.redis_key_prefix})
  databases    {config.mysql_url or config.var_dir}
  logs         {stack.log_dir}/
Press Ctrl-C to stop.""",
        flush=True,
    )
    while not stopping.is_set():
        for name, process in list(stack.processes.items()):
            if process.poll() is not None:
                print(
                    f"{name} exited with {process.returncode}; see {stack.log_dir}/{name}.log",
                    file=sys.stderr,
                )
                stopping.set()
        stopping.wait(1.0)
    print("stopping ...", flush=True)
    stack.stop()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
