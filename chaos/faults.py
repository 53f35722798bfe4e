"""The faults, injected one at a time at random moments (seeded), in shuffled rounds so that
even a short run injects every kind:

- ``kill_process``: SIGKILL a random service API, worker or the gateway; start it again.
- ``kill_mid_write``: send a write to a service and SIGKILL its API process while the request
  is in flight (the database has no connection to cut on SQLite; this is its stand-in).
- ``restart_broker``: kill the in-memory broker and start it empty on the same port.
- ``cut_database``: cut every MariaDB connection and refuse new ones for a few seconds.
- ``cut_redis``: the same for Redis.

A supervisor also restarts any process that exited on its own (counted apart: a process
that dies without being killed is worth a look).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from chaos.proxy import TcpProxy
from deploy.local.stack import SERVICES, Stack

log = logging.getLogger("tuike.chaos.faults")


class Injector:
    def __init__(
        self,
        stack: Stack,
        rng: random.Random,
        *,
        db_proxy: TcpProxy | None,
        redis_proxy: TcpProxy | None,
        write_for: Callable[[str], Coroutine[Any, Any, None]],
        say: Callable[[str], None],
        only: tuple[str, ...] | None = None,
        cut_seconds: tuple[float, float] = (2.0, 5.0),
    ) -> None:
        self.only = only
        self.cut_seconds = cut_seconds
        self.stack = stack
        self.rng = rng
        self.db_proxy = db_proxy
        self.redis_proxy = redis_proxy
        self.write_for = write_for
        self.say = say
        self.counts: Counter[str] = Counter()
        self.unexpected_exits: Counter[str] = Counter()
        self._lock = asyncio.Lock()  # faults and the supervisor never restart at once
        self._background: set[asyncio.Task[None]] = set()

    @property
    def kinds(self) -> list[str]:
        kinds = ["kill_process", "restart_broker"]
        if self.db_proxy is not None:
            kinds.append("cut_database")
        else:
            kinds.append("kill_mid_write")
        if self.redis_proxy is not None:
            kinds.append("cut_redis")
        if self.only:
            kinds = [kind for kind in kinds if kind in self.only]
        return kinds

    def killable(self) -> list[str]:
        return [
            name
            for name in self.stack.processes
            if name in SERVICES or name.endswith("-worker") or name == "gateway"
        ]

    async def run(self, stop: asyncio.Event, interval: tuple[float, float]) -> None:
        """Inject until ``stop``: wait a random interval, then the next kind of the round."""
        round_: list[str] = []
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.rng.uniform(*interval))
                break
            except TimeoutError:
                pass
            if not round_:
                round_ = self.kinds
                self.rng.shuffle(round_)
            kind = round_.pop()
            started = time.monotonic()
            async with self._lock:
                detail = await getattr(self, kind)()
            self.counts[kind] += 1
            self.say(f"fault {kind} {detail} ({time.monotonic() - started:.1f}s)")
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- the kinds -------------------------------------------------------------------------
    async def kill_process(self) -> str:
        name = self.rng.choice(self.killable())
        self.stack.kill(name)
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        await self._start(name)
        return name

    async def kill_mid_write(self) -> str:
        service = self.rng.choice([s for s in SERVICES if s != "stats"])
        # The driver's own call, retried with its idempotency key after the kill.
        task = asyncio.create_task(self.write_for(service))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.sleep(self.rng.uniform(0.005, 0.08))
        self.stack.kill(service)
        await self._start(service)
        return service

    async def restart_broker(self) -> str:
        await asyncio.to_thread(self.stack.restart_broker)
        return "broker"

    async def cut_database(self) -> str:
        assert self.db_proxy is not None
        seconds = self.rng.uniform(*self.cut_seconds)
        await self.db_proxy.cut(seconds)
        return f"{seconds:.1f}s"

    async def cut_redis(self) -> str:
        assert self.redis_proxy is not None
        seconds = self.rng.uniform(*self.cut_seconds)
        await self.redis_proxy.cut(seconds)
        return f"{seconds:.1f}s"

    # -- keeping the stack up --------------------------------------------------------------
    async def _start(self, name: str, budget: float = 120.0) -> None:
        """Start ``name`` and wait until it serves (an API) or stays up (a worker). A start
        that fails (Redis or the database away at that moment) is tried again."""
        deadline = time.monotonic() + budget
        while True:
            self.stack.start_process(name)
            try:
                await asyncio.to_thread(self._wait_up, name)
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} does not come back: {exc}") from exc
                log.warning("%s did not start (%s); again", name, exc)
                process = self.stack.processes[name]
                if process.poll() is None:
                    self.stack.kill(name)
                await asyncio.sleep(1.0)

    def _wait_up(self, name: str, seconds: float = 60) -> None:
        process = self.stack.processes[name]
        if name in SERVICES:
            url: str | None = f"{self.stack.service_url(name)}/healthz"
        elif name == "gateway":
            url = f"{self.stack.gateway_url}/healthz"
        else:
            url = None  # a worker serves nothing: up = still running after a moment
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
            if url is None:
                if time.monotonic() > deadline - seconds + 1.0:
                    return
            else:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url, timeout=2).status_code == 200:
                        return
            time.sleep(0.1)
        raise TimeoutError(f"{name} not up within {seconds}s")

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart processes that exited without being killed by a fault."""
        while not stop.is_set():
            await asyncio.sleep(0.5)
            async with self._lock:
                for name, process in list(self.stack.processes.items()):
                    if name in ("broker", "redis") or process.poll() is None:
                        continue
                    self.unexpected_exits[name] += 1
                    self.say(f"{name} exited on its own ({process.returncode}); restarting")
                    await self._start(name)
