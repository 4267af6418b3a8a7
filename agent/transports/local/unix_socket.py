"""The local Unix socket: KataGo's analysis protocol as JSON lines, one client per connection.

``socat - UNIX-CONNECT:/run/katago-edge/agent.sock`` behaves like ``katago analysis`` on a
terminal: write one JSON query per line, read one JSON response per line. At the end of input
(``echo '{...}' | socat - UNIX-CONNECT:...`` half-closes the connection) the queries already
received are answered and then the connection closes, as ``katago analysis`` does at the end of
stdin; a client that closes both directions has its queries terminated. The socket file gets
mode 0660 (the service user's group may connect), and a stale file left by a crash is replaced.
A live socket that answers is never replaced: two agents would fight over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import stat
from pathlib import Path

from agent.errors import TransportError
from agent.transports.session import ClientSession, LocalTransport, LoopThread, QueryService

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20  # KataGo queries with a long game are ~10 kB; 1 MiB is generous


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise TransportError(f"{path} exists and is not a socket; remove it or set socket.path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: a leftover from a crash
        return
    finally:
        probe.close()
    raise TransportError(f"another agent is already serving on {path}; stop it or set socket.path")


class UnixSocketTransport(LocalTransport):
    """Serves ``service`` on a Unix stream socket from its own event-loop thread."""

    def __init__(self, service: QueryService, path: Path, mode: int = 0o660) -> None:
        self._service = service
        self.path = path
        self._mode = mode
        self._loop = LoopThread("unix-socket")
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[ClientSession] = set()
        self._outputs: dict[asyncio.StreamWriter, tuple[asyncio.Queue[str | None], asyncio.Task[None]]] = {}

    def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(self.path)
        except OSError as exc:
            raise TransportError(f"cannot create socket {self.path}: {exc.strerror or exc}") from exc
        self._loop.start()
        try:
            self._server = self._loop.call(self._listen())
        except OSError as exc:
            self._loop.stop()
            raise TransportError(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc
        logger.info("analysis protocol on unix socket %s", self.path)

    async def _listen(self) -> asyncio.AbstractServer:
        old_umask = os.umask(0o077)  # no window in which the socket is world-connectable
        try:
            server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_LINE_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, self._mode)
        return server

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        session, out = self._open_session("unix")
        pump = asyncio.create_task(self._pump(out, writer))
        self._outputs[writer] = (out, pump)
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:  # line over the limit: KataGo-style error, then drop the client
                    out.put_nowait('{"error":"query line too long"}')  # on the loop already
                    break
                if not raw:
                    # End of input. The client may only have closed its writing side (``echo ... |
                    # socat``): like KataGo at the end of stdin, answer what was received, then close.
                    await self._drain(session, writer, pump)
                    break
                await loop.run_in_executor(None, session.feed_raw, raw)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            session.close()
            self._sessions.discard(session)
            out.put_nowait(None)
            try:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pump, 5.0)
            finally:  # also when cancelled at loop shutdown: never leave the transport open
                self._outputs.pop(writer, None)
                writer.close()

    async def _drain(
        self, session: ClientSession, writer: asyncio.StreamWriter, pump: asyncio.Task[None]
    ) -> None:
        """Wait until ``session`` has no answer pending, unless the client is gone altogether
        (POLLHUP: both directions closed) or its output failed; then it is terminated."""
        sock = writer.get_extra_info("socket")
        poller = select.poll()
        if sock is not None:
            poller.register(sock.fileno(), select.POLLHUP)
        while session.pending and not pump.done():  # at shutdown the engine ends them
            if sock is not None and any(ev & select.POLLHUP for _fd, ev in poller.poll(0)):
                return
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)  # responses handed over by call_soon_threadsafe land first

    async def _pump(self, out: asyncio.Queue[str | None], writer: asyncio.StreamWriter) -> None:
        while (text := await out.get()) is not None:
            try:
                writer.write(text.encode() + b"\n")
                await writer.drain()
            except (ConnectionError, RuntimeError):
                return

    def stop_accepting(self) -> None:
        self._refuse_queries()
        if self._server is not None and self._loop.running:
            self._loop.loop.call_soon_threadsafe(self._server.close)  # asyncio is not thread-safe

    def close(self, timeout: float = 5.0) -> None:
        self.stop_accepting()
        if self._loop.running:
            with contextlib.suppress(Exception):
                self._loop.call(self._shutdown(), timeout)
        self._loop.stop(timeout)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _shutdown(self) -> None:
        await asyncio.sleep(0.05)  # responses handed over by call_soon_threadsafe land first
        for writer, (out, pump) in list(self._outputs.items()):
            out.put_nowait(None)  # the pump writes what is queued, then stops
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, 2.0)
            writer.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if handlers:
            await asyncio.wait(handlers, timeout=2.0)
