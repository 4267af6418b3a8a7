"""WebSocket endpoint for KaTrain's remote engine (KaTrain 1.18+, ``ws://HOST:PORT``).

What KaTrain's ``RemoteKataGoEngine`` (``katrain/core/remote_engine.py``, read in the 1.20.0
wheel) does on the wire, and so what this endpoint accepts:

- it connects with ``websocket-client``, which sends ``Origin: http://HOST:PORT`` unless told
  not to; any URL path is accepted;
- every query is **one text frame** holding one JSON object with no trailing newline; ids are
  ``QUERY:<n>``, numbered from 1 for each engine it starts;
- a response frame may carry several JSON objects separated by newlines; it splits on lines,
  so sending one response per frame (what we do) is fine;
- on reconnect it re-sends the queries that got no final response, with the same ids.

Frames with several newline-separated queries are accepted too (a ``katago analysis`` script
ported to a socket). The server listens on localhost by default; a handshake whose ``Origin``
names a foreign site (a web page in a browser on the same machine) is refused with 403, which
closes the cross-site WebSocket hole that localhost servers otherwise have (see
:func:`origin_allowed`).

Authentication: with ``token_file`` set (``[websocket] token_file``), a handshake must carry the
file's token, as ``Authorization: Bearer <token>`` or in the URL (``ws://HOST:PORT/?token=<token>``,
which is what KaTrain's remote-engine URL field can hold); others get 401. The file must not be
world-readable (0640, group = the service group, like the Unix socket's 0660): local users
outside that group can then neither read the token nor connect, as on the Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.errors import TransportError
from agent.transports.session import ClientSession, LocalTransport, LoopThread, QueryService

logger = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def origin_allowed(origin: str | None, allowed_hosts: Iterable[str], host_header: str | None = None) -> bool:
    """Whether a handshake may proceed, judged by its ``Origin`` (browsers always send one).

    Allowed: no Origin (a non-browser client); an Origin naming one of ``allowed_hosts``
    (localhost, the configured listen host); or an Origin equal to the ``Host`` the client
    connected to when that is an IP address, which is what ``websocket-client`` (KaTrain) sends
    when it connects to ``ws://<device ip>:<port>``. A page from another site has a foreign Origin;
    a DNS-rebinding page has Origin == Host but a domain name as Host, so both are refused.
    """
    if origin is None:
        return True
    host = (urlsplit(origin).hostname or "").lower()
    if not host:
        return False
    if host in {h.lower() for h in allowed_hosts}:
        return True
    target = (urlsplit(f"//{host_header}").hostname or "").lower() if host_header else ""
    return host == target and _is_ip(target)


def read_token(path: Path) -> str:
    """The WebSocket token from ``path``; refuses a world-readable, unreadable or empty file."""
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TransportError(f"WebSocket token file {path}: cannot read it: {exc}") from exc
    if mode & stat.S_IROTH:
        raise TransportError(
            f"WebSocket token file {path} is world-readable: chmod 0640 it (group = the service group)"
        )
    if len(token) < 16:
        raise TransportError(f"WebSocket token file {path}: the token must be at least 16 characters")
    return token


def token_matches(expected: str, authorization: str | None, path: str | None) -> bool:
    """Whether a handshake carries ``expected`` (Bearer header or ``?token=`` in the URL)."""
    offered: list[str] = []
    if authorization and authorization.lower().startswith("bearer "):
        offered.append(authorization[7:].strip())
    if path:
        offered.extend(parse_qs(urlsplit(path).query).get("token", []))
    return any(hmac.compare_digest(o.encode(), expected.encode()) for o in offered)


class WebSocketTransport(LocalTransport):
    """Serves ``service`` over WebSocket from its own event-loop thread."""

    def __init__(
        self,
        service: QueryService,
        host: str,
        port: int,
        max_message_bytes: int = 1 << 20,
        token_file: Path | None = None,
    ) -> None:
        try:
            import websockets.asyncio.server  # noqa: F401  (presence check; imported again lazily)
        except ImportError as exc:
            raise TransportError(
                "the WebSocket endpoint needs the 'websockets' package: pip install 'websockets>=13' "
                "(or set websocket.enabled = false)"
            ) from exc
        self._service = service
        self.host = host
        self.port = port
        self._max = max_message_bytes
        self._loop = LoopThread("websocket")
        self._server: Any = None
        self._sessions: set[ClientSession] = set()
        self._allowed = set(LOCAL_HOSTS) | {host}
        self._token_file = token_file
        self._token: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    def start(self) -> None:
        if self._token_file is not None:
            self._token = read_token(self._token_file)
        self._loop.start()
        try:
            self._server = self._loop.call(self._listen())
        except OSError as exc:
            self._loop.stop()
            raise TransportError(
                f"cannot listen on {self.host}:{self.port} for WebSocket: {exc.strerror or exc} "
                "(set websocket.port, or --websocket HOST:PORT)"
            ) from exc
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])  # the real port when 0 was asked for
        logger.info("analysis protocol on %s (KaTrain: remote engine URL)", self.url)
        if self._token is None:
            reach = "every local user" if self.host in LOCAL_HOSTS else "every host that can reach it"
            logger.warning(
                "WebSocket %s has no token: %s can run analyses here; set [websocket] token_file "
                "(docs/daemon.md) or enabled = false",
                self.url,
                reach,
            )

    async def _listen(self) -> Any:
        from websockets.asyncio.server import serve

        return await serve(
            self._client,
            self.host,
            self.port,
            max_size=self._max,
            process_request=self._check_origin,
            ping_interval=20,
            ping_timeout=60,
        )

    def _check_origin(self, connection: Any, request: Any) -> Any:
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, self._allowed, request.headers.get("Host")):
            logger.warning("refused WebSocket from origin %r", origin)
            return connection.respond(403, "origin not allowed\n")
        if self._token is not None and not token_matches(
            self._token, request.headers.get("Authorization"), request.path
        ):
            logger.warning("refused WebSocket without a valid token from %r", connection.remote_address)
            return connection.respond(
                401, "token required: ws://HOST:PORT/?token=... or Authorization: Bearer\n"
            )
        return None

    async def _client(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        session, out = self._open_session("ws")
        pump = asyncio.create_task(self._pump(out, connection))
        try:
            async for message in connection:
                # Text frames are valid UTF-8 (websockets closes with 1007 otherwise); a binary
                # frame is decoded strictly, per line: invalid UTF-8 gets KataGo's parse error.
                raw = message if isinstance(message, bytes) else message.encode()
                for line in raw.splitlines() or [b""]:
                    await loop.run_in_executor(None, session.feed_raw, line)
        except ConnectionClosed:
            pass
        finally:
            session.close()
            self._sessions.discard(session)
            out.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, 5.0)

    async def _pump(self, out: asyncio.Queue[str | None], connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        while (text := await out.get()) is not None:
            try:
                await connection.send(text)
            except ConnectionClosed:
                return

    def stop_accepting(self) -> None:
        self._refuse_queries()
        if self._server is not None and self._loop.running:
            self._loop.loop.call_soon_threadsafe(self._server.server.close)  # listener only

    def close(self, timeout: float = 5.0) -> None:
        self.stop_accepting()
        if self._server is not None and self._loop.running:
            with contextlib.suppress(Exception):
                self._loop.call(self._shutdown(), timeout)
        self._loop.stop(timeout)

    async def _shutdown(self) -> None:
        await asyncio.sleep(0.05)  # responses handed over by call_soon_threadsafe land first
        self._server.close(close_connections=True)
        await self._server.wait_closed()
