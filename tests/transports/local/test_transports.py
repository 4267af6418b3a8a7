"""The local transports against a small line service: id namespacing, terminate on close, origin check.

The service here is the transport's own interface (``handle_query(query, emit)``: the session
decodes each line once) answering from a worker thread like an engine does; the daemon tests run the same transports over the real engine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.transports.local.unix_socket import UnixSocketTransport
from agent.transports.local.websocket import WebSocketTransport, origin_allowed


class ThreadedEchoService:
    """Answers each query from a thread: one partial then one final; records terminates."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[dict[str, Any]] = []
        self.terminated: list[str] = []

    def handle_line(self, line: str, emit: Callable[[dict[str, Any]], None]) -> None:
        try:
            query = json.loads(line)
        except ValueError:
            emit({"error": "Could not parse json"})
            return
        self.handle_query(query, emit)

    def handle_query(self, query: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
        self.seen.append(query)
        if query.get("action") == "terminate":
            self.terminated.append(query["terminateId"])
            emit({"id": query["id"], "action": "terminate", "terminateId": query["terminateId"]})
            return

        def work() -> None:
            emit({"id": query["id"], "turnNumber": 0, "isDuringSearch": True})
            time.sleep(self.delay)
            emit({"id": query["id"], "turnNumber": 0, "isDuringSearch": False, "rootInfo": {"visits": 1}})

        threading.Thread(target=work, daemon=True).start()


def _read_lines(sock: socket.socket, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    sock.settimeout(timeout)
    buf = b""
    while buf.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [json.loads(x) for x in buf.decode().splitlines()]


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "agent.sock"


def test_unix_socket__two_clients_same_id_get_their_own_answers(sock_path: Path) -> None:
    service = ThreadedEchoService()
    transport = UnixSocketTransport(service, sock_path)
    transport.start()
    try:
        assert oct(sock_path.stat().st_mode & 0o777) == "0o660"
        a, b = (socket.socket(socket.AF_UNIX) for _ in range(2))
        for s in (a, b):
            s.connect(str(sock_path))
            s.sendall(b'{"id": "QUERY:1", "moves": []}\n\n')
        got_a, got_b = _read_lines(a, 2), _read_lines(b, 2)
        assert [r["id"] for r in got_a + got_b] == ["QUERY:1"] * 4
        assert [r["isDuringSearch"] for r in got_a] == [True, False]
        engine_ids = {q["id"] for q in service.seen}
        assert len(engine_ids) == 2 and all(i.endswith(":QUERY:1") for i in engine_ids)
        a.sendall(b"not json\n")
        assert _read_lines(a, 1) == [{"error": "Could not parse json"}]
        a.close()
        b.close()
    finally:
        transport.close()
    assert not sock_path.exists()


def test_unix_socket__disconnect_terminates_running_queries(sock_path: Path) -> None:
    service = ThreadedEchoService(delay=2.0)
    transport = UnixSocketTransport(service, sock_path)
    transport.start()
    try:
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(sock_path))
        c.sendall(b'{"id": "long", "moves": []}\n')
        assert _read_lines(c, 1)[0]["isDuringSearch"] is True
        c.close()
        deadline = time.monotonic() + 5
        while not service.terminated and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(service.terminated) == 1 and service.terminated[0].endswith(":long")
    finally:
        transport.close()


def test_unix_socket__refuses_to_steal_a_live_socket(sock_path: Path) -> None:
    from agent.errors import TransportError

    first = UnixSocketTransport(ThreadedEchoService(), sock_path)
    first.start()
    try:
        with pytest.raises(TransportError, match="already serving"):
            UnixSocketTransport(ThreadedEchoService(), sock_path).start()
        # the refused start probed the live socket: its server must have accepted that connection
        # before it closes (an accept still pending at close leaks its transport). A client served
        # after the probe shows it was: the listen backlog is first in, first out.
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(sock_path))
            c.sendall(b'{"id": "after-probe", "moves": []}\n')
            assert [r["isDuringSearch"] for r in _read_lines(c, 2, 30)] == [True, False]
    finally:
        first.close()
    # a stale file (nobody listening) is replaced
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()
    again = UnixSocketTransport(ThreadedEchoService(), sock_path)
    again.start()
    again.close()


@pytest.mark.parametrize(
    ("origin", "host", "ok"),
    [
        (None, None, True),  # not a browser
        ("http://127.0.0.1:6470", "127.0.0.1:6470", True),
        ("http://localhost", "localhost:6470", True),
        ("https://evil.example", "127.0.0.1:6470", False),  # cross-site page
        ("http://192.168.1.20:6470", "192.168.1.20:6470", True),  # KaTrain on another machine
        ("http://[fe80::1]:6470", "[fe80::1]:6470", True),
        ("http://rebind.example:6470", "rebind.example:6470", False),  # DNS rebinding
        ("http://192.168.1.21", "192.168.1.20:6470", False),
        ("null", "127.0.0.1:6470", False),
    ],
)
def test_websocket__origin_allowed(origin: str | None, host: str | None, ok: bool) -> None:
    assert origin_allowed(origin, {"127.0.0.1", "localhost", "::1"}, host) is ok


def test_websocket__katrain_style_frames_and_foreign_origin_refused() -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    service = ThreadedEchoService()
    transport = WebSocketTransport(service, "127.0.0.1", 0)
    transport.start()

    async def talk() -> list[dict[str, Any]]:
        async with connect(transport.url, origin="http://127.0.0.1:6470") as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"id": "QUERY:1", "moves": []}))  # KaTrain: one object, no newline
            await ws.send('{"id": "a", "moves": []}\n{"id": "b", "moves": []}\n')
            return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(6)]

    async def foreign() -> None:
        async with connect(transport.url, origin="https://evil.example"):  # type: ignore[arg-type]
            pass

    try:
        got = asyncio.run(talk())
        finals = sorted(r["id"] for r in got if r["isDuringSearch"] is False)
        assert finals == ["QUERY:1", "a", "b"]
        with pytest.raises(InvalidStatus, match="403"):
            asyncio.run(foreign())
    finally:
        transport.close()


def test_session__pending_counts_one_final_per_analysed_turn() -> None:
    from agent.transports.session import ClientSession

    sent: list[str] = []
    emits: list[Callable[[dict[str, Any]], None]] = []

    class Holding:
        """Keeps ``emit`` so the test decides when each final response arrives."""

        def __init__(self) -> None:
            self.lines: list[dict[str, Any]] = []

        def handle_line(self, line: str, emit: Callable[[dict[str, Any]], None]) -> None:
            self.handle_query(json.loads(line), emit)

        def handle_query(self, query: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
            self.lines.append(dict(query))
            emits.append(emit)

    service = Holding()
    session = ClientSession(service, sent.append, "test")
    session.feed_line('{"id": "g", "moves": [], "analyzeTurns": [0, 1, 2]}')
    assert session.pending == 3
    internal = service.lines[0]["id"]
    for turn in (0, 1):
        emits[0]({"id": internal, "turnNumber": turn, "isDuringSearch": False})
    assert session.pending == 1 and json.loads(sent[-1])["id"] == "g"
    session.close()  # the client left with turn 2 still running: it is terminated
    terminate = service.lines[-1]
    assert terminate["action"] == "terminate" and terminate["terminateId"] == internal


def test_unix_socket__half_closed_input_is_answered_then_closed(sock_path: Path) -> None:
    """``echo '{...}' | socat - UNIX-CONNECT:agent.sock``: the write side closes at once (#16)."""
    service = ThreadedEchoService(delay=0.5)
    transport = UnixSocketTransport(service, sock_path)
    transport.start()
    try:
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(sock_path))
        c.sendall(b'{"id": "a", "moves": []}\n{"id": "b", "moves": [], "analyzeTurns": [0, 0]}\n')
        c.shutdown(socket.SHUT_WR)
        c.settimeout(5)
        buf = b""
        while chunk := c.recv(65536):  # the server closes after the last answer: recv gives b""
            buf += chunk
        c.close()
        got = [json.loads(x) for x in buf.decode().splitlines()]
        finals = sorted(r["id"] for r in got if r.get("isDuringSearch") is False)
        assert finals == ["a", "b"] and service.terminated == []
    finally:
        transport.close()


def test_unix_socket__invalid_utf8_is_rejected_not_replaced(sock_path: Path) -> None:
    service = ThreadedEchoService()
    transport = UnixSocketTransport(service, sock_path)
    transport.start()
    try:
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(sock_path))
        c.sendall(b'{"id": "bad\xff", "moves": []}\n{"id": "ok", "moves": []}\n')
        got = _read_lines(c, 3)
        c.close()
        assert got[0]["error"].startswith("[json.exception.parse_error] invalid UTF-8 (invalid start byte")
        assert [q["id"].rsplit(":", 1)[1] for q in service.seen] == ["ok"]  # the bad line never ran
    finally:
        transport.close()


class HoldingService:
    """A one-slot engine: queries wait in FIFO order; ``finish()`` answers the oldest."""

    def __init__(self) -> None:
        self.queue: list[tuple[dict[str, Any], Callable[[dict[str, Any]], None]]] = []
        self.terminated: list[str] = []
        self.lock = threading.Lock()

    def handle_line(self, line: str, emit: Callable[[dict[str, Any]], None]) -> None:
        self.handle_query(json.loads(line), emit)

    def handle_query(self, query: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
        if query.get("action") == "terminate":
            with self.lock:
                self.terminated.append(query["terminateId"])
                hit = [(q, e) for q, e in self.queue if q["id"] == query["terminateId"]]
                self.queue = [(q, e) for q, e in self.queue if q["id"] != query["terminateId"]]
            for q, e in hit:
                e({"id": q["id"], "turnNumber": 0, "isDuringSearch": False, "noResults": True})
            emit({"id": query["id"], "action": "terminate", "terminateId": query["terminateId"]})
            return
        with self.lock:
            self.queue.append((query, emit))

    def finish(self) -> str:
        with self.lock:
            query, emit = self.queue.pop(0)
        emit({"id": query["id"], "turnNumber": 0, "isDuringSearch": False})
        return str(query["id"])


def test_session__a_flooding_client_delays_another_by_at_most_its_inflight_limit() -> None:
    from agent.transports.session import ClientSession

    service = HoldingService()
    sent_a: list[str] = []
    sent_b: list[str] = []
    a = ClientSession(service, sent_a.append, "a", max_inflight=2, max_queries=100)
    b = ClientSession(service, sent_b.append, "b", max_inflight=2)
    for i in range(100):
        a.feed_line(json.dumps({"id": f"a{i}", "moves": []}))
    a.feed_line(json.dumps({"id": "a100", "moves": []}))  # over max_queries
    assert json.loads(sent_a[-1]) == {
        "id": "a100",
        "error": "too many queries from this connection (100 not yet answered); wait for answers before sending more",
    }
    assert len(service.queue) == 2 and a.pending == 100  # 98 wait in the session, not the engine
    b.feed_line(json.dumps({"id": "b0", "moves": []}))
    served = [service.finish().rsplit(":", 1)[1] for _ in range(3)]
    assert served == ["a0", "a1", "b0"]  # b's query came third, not 101st
    assert json.loads(sent_b[-1]) == {"id": "b0", "turnNumber": 0, "isDuringSearch": False}
    # terminate_all from b reaches none of a's queries; from a, all of them (held ones included)
    b.feed_line(json.dumps({"id": "t", "action": "terminate_all"}))
    assert json.loads(sent_b[-1]) == {"id": "t", "action": "terminate_all"} and service.terminated == []
    a.feed_line(json.dumps({"id": "t", "action": "terminate_all"}))
    assert a.pending == 0 and len(service.terminated) == 98 and service.queue == []
    finals = [json.loads(x) for x in sent_a if '"noResults"' in x]
    assert len(finals) == 98 and finals[0]["id"] == "a2"


def test_websocket__token_file_required_when_set(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from agent.errors import TransportError

    token_file = tmp_path / "websocket-token"
    token_file.write_text("s3cret-token-0123456789\n")
    token_file.chmod(0o644)
    with pytest.raises(TransportError, match="world-readable"):
        WebSocketTransport(ThreadedEchoService(), "127.0.0.1", 0, token_file=token_file).start()
    token_file.chmod(0o640)
    transport = WebSocketTransport(ThreadedEchoService(), "127.0.0.1", 0, token_file=token_file)
    transport.start()

    async def ask(url: str, **kwargs: Any) -> dict[str, Any]:
        async with connect(url, **kwargs) as ws:
            await ws.send(json.dumps({"id": "QUERY:1", "moves": []}))
            while True:
                response = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if response.get("isDuringSearch") is False:
                    return response

    try:
        for url, headers in (
            (transport.url, None),
            (transport.url + "/?token=wrong-token-0123456789", None),
            (transport.url, {"Authorization": "Bearer wrong"}),
        ):
            with pytest.raises(InvalidStatus, match="401"):
                asyncio.run(ask(url, additional_headers=headers))
        assert asyncio.run(ask(transport.url + "/?token=s3cret-token-0123456789"))["id"] == "QUERY:1"
        bearer = {"Authorization": "Bearer s3cret-token-0123456789"}
        assert asyncio.run(ask(transport.url, additional_headers=bearer))["id"] == "QUERY:1"
    finally:
        transport.close()


def test_session__empty_analyze_turns_holds_no_slot() -> None:
    from agent.transports.session import ClientSession

    service = HoldingService()
    sent: list[str] = []
    session = ClientSession(service, sent.append, "e", max_inflight=1)
    session.feed_line(json.dumps({"id": "none", "moves": [], "analyzeTurns": []}))
    session.feed_line(json.dumps({"id": "next", "moves": []}))
    assert session.pending == 1 and [q["id"].rsplit(":", 1)[1] for q, _e in service.queue] == ["none", "next"]
