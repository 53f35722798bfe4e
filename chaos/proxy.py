"""A TCP proxy that can cut every connection and refuse new ones for a while: the harness
puts it between the services and MariaDB / Redis to take the database or Redis away without
stopping the server (other test runs share it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("tuike.chaos.proxy")


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``.

    :meth:`cut` closes every open connection at once and closes the listening socket, so new
    connections are refused (``ECONNREFUSED``) until the cut ends; then it listens again on
    the same port, and clients reconnect as they would after a network blip.
    """

    def __init__(self, target_host: str, target_port: int, port: int) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.cuts = 0
        self.connections = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    async def stop(self) -> None:
        await self._close_listener()
        await self._drop_all()

    async def cut(self, seconds: float) -> None:
        """Cut all connections and refuse new ones for ``seconds``."""
        self.cuts += 1
        await self._close_listener()
        await self._drop_all()
        await asyncio.sleep(seconds)
        # The port may linger for a moment after the close; a few tries bound the wait.
        for _ in range(50):
            try:
                await self.start()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"proxy could not listen on {self.port} again")

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                # An abort sends RST: the client sees the connection reset, not a clean EOF.
                writer.transport.abort()
        self._writers.clear()
        for task in list(self._pipes):
            task.cancel()
        if self._pipes:
            await asyncio.gather(*self._pipes, return_exceptions=True)
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
                self._writers.discard(w)
            self._pipes.difference_update(pipes)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()
