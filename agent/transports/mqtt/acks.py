"""PUBACKs sent in the order their PUBLISH packets arrived.

MQTT (3.1.1 section 4.6, 5.0 section 4.6) requires a receiver to acknowledge QoS 1 messages in the
order it received them. The agent acknowledges a request only once its final reply is published
(back-pressure and redelivery after a crash, see :mod:`agent.transports.mqtt.transport`), and
requests finish in any order: a 2-visit query overtakes a 10,000-visit one. So a finished
request's acknowledgement waits here until every earlier one is ready, then they go out together.

Acknowledgements belong to one connection: on a new connection the broker redelivers whatever
was not acknowledged (persistent session, same packet ids), so :meth:`OrderedAcks.new_connection`
forgets the old ones (sending them later would acknowledge the redelivered copies out of order;
the dispatcher attaches a redelivered copy's own acknowledgement to the request still running).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Send = Callable[[int, int], object]  # (mid, qos) -> paho's Client.ack


@dataclass
class _Pending:
    mid: int
    qos: int
    connection: int
    ready: bool = False


class OrderedAcks:
    """Hands out one acknowledgement callable per received QoS>0 message; sends them in order."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._connection = 0
        self.reordered = 0  # acknowledgements that had to wait for an earlier one (a counter)

    def new_connection(self) -> None:
        with self._lock:
            self._connection += 1
            self._pending.clear()

    def waiting(self) -> int:
        with self._lock:
            return len(self._pending)

    def ticket(self, mid: int, qos: int) -> Callable[[], None]:
        """The acknowledgement of message ``mid``; calling it more than once sends it once."""
        with self._lock:
            entry = _Pending(mid, qos, self._connection)
            self._pending.append(entry)

        def ack() -> None:
            # Sent under the lock, so two threads finishing at once cannot interleave their runs.
            # (paho's ack takes only its outgoing-packet lock, never one that calls back into us.)
            with self._lock:
                if entry.ready or entry.connection != self._connection:
                    return
                entry.ready = True
                if self._pending and self._pending[0] is not entry:
                    self.reordered += 1
                while self._pending and self._pending[0].ready:
                    one = self._pending.popleft()
                    self._send(one.mid, one.qos)

        return ack
