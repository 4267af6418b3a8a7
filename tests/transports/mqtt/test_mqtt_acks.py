"""PUBACKs leave in the order their PUBLISHes arrived, whatever order the requests finish in."""

from __future__ import annotations

import threading

from agent.transports.mqtt.acks import OrderedAcks


def test_acks__a_later_request_finishing_first_waits_for_the_earlier_one() -> None:
    sent: list[tuple[int, int]] = []
    acks = OrderedAcks(lambda mid, qos: sent.append((mid, qos)))
    long, short, third = acks.ticket(7, 1), acks.ticket(8, 1), acks.ticket(9, 1)
    short()
    third()
    assert sent == []
    assert acks.waiting() == 3
    long()
    assert sent == [(7, 1), (8, 1), (9, 1)]
    assert acks.waiting() == 0
    assert acks.reordered == 2


def test_acks__each_is_sent_once() -> None:
    sent: list[int] = []
    acks = OrderedAcks(lambda mid, qos: sent.append(mid))
    first = acks.ticket(1, 1)
    first()
    first()
    assert sent == [1]


def test_acks__a_new_connection_forgets_the_old_ones() -> None:
    """The broker redelivers what was not acknowledged; an old connection's ack is never sent on the
    new one, and an unfinished old request does not hold the new connection's acks back."""
    sent: list[int] = []
    acks = OrderedAcks(lambda mid, qos: sent.append(mid))
    old = acks.ticket(1, 1)
    acks.new_connection()
    new = acks.ticket(1, 1)
    other = acks.ticket(2, 1)
    other()
    assert sent == []  # waits for the redelivered mid 1
    old()
    assert sent == []
    new()
    assert sent == [1, 2]


def test_acks__threads_finishing_together_never_interleave() -> None:
    sent: list[int] = []
    acks = OrderedAcks(lambda mid, qos: sent.append(mid))
    tickets = [acks.ticket(mid, 1) for mid in range(1, 401)]
    threads = [threading.Thread(target=t) for t in reversed(tickets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sent == list(range(1, 401))
