"""Request/response against a real mosquitto: correlation, partials, isolation, fleet sharing."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
from mqtt_support import StubService, read_retained, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from agent.transports.mqtt.topics import FleetTopics

QUERY = {
    "id": "q1",
    "moves": [["B", "D4"]],
    "rules": "chinese",
    "komi": 7.5,
    "boardXSize": 9,
    "boardYSize": 9,
}


def test_roundtrip__reply_carries_correlation_data(make_agent, make_requester, real_service):
    agent = make_agent("dev1", real_service)
    req = make_requester()
    corr = req.send(agent.topics.request, {**QUERY, "maxVisits": 10})
    pending = req.wait(corr, 10)
    assert len(pending.responses) == 1
    final = pending.responses[0]
    assert final["id"] == "q1" and final["isDuringSearch"] is False and final["turnNumber"] == 1
    assert final["rootInfo"]["visits"] >= 10 and final["moveInfos"][0]["move"] != "D4"
    assert req.unmatched == 0


def test_roundtrip__partials_from_real_engine(make_agent, make_requester, make_service):
    agent = make_agent("dev1", make_service(delay=0.01, max_visits=60))
    req = make_requester()
    responses = req.request(agent.topics.request, {**QUERY, "reportDuringSearchEvery": 0.05}, timeout=20)
    assert [r["isDuringSearch"] for r in responses][-1] is False
    assert responses.count(responses[-1]) == 1 and len(responses) >= 2
    visits = [r["rootInfo"]["visits"] for r in responses]
    assert visits == sorted(visits) and visits[-1] >= 60


def test_roundtrip__partials_then_final_each_one_message(make_agent, make_requester):
    agent = make_agent("dev1", StubService(delay_s=0.2, partials=3))
    req = make_requester()
    responses = req.request(agent.topics.request, {**QUERY, "reportDuringSearchEvery": 0.05}, timeout=10)
    assert [r["isDuringSearch"] for r in responses] == [True, True, True, False]
    assert [r["rootInfo"]["visits"] for r in responses] == [1, 2, 3, 4]


def test_roundtrip__analyze_turns_gives_one_final_per_turn(make_agent, make_requester):
    agent = make_agent("dev1")
    req = make_requester()
    responses = req.request(agent.topics.request, {**QUERY, "analyzeTurns": [0, 1]}, timeout=10)
    assert sorted(r["turnNumber"] for r in responses) == [0, 1]


def test_roundtrip__two_clients_same_ids_get_only_their_own_replies(make_agent, make_requester):
    agent = make_agent("dev1", StubService(delay_s=0.05, partials=1), config=None)
    a, b = make_requester(), make_requester()
    corr_a = [a.send(agent.topics.request, {**QUERY, "id": f"q{i}", "komi": 6.5}) for i in range(5)]
    corr_b = [b.send(agent.topics.request, {**QUERY, "id": f"q{i}", "komi": 0.5}) for i in range(5)]
    for req, corrs in ((a, corr_a), (b, corr_b)):
        for i, c in enumerate(corrs):
            p = req.wait(c, 15)
            assert [r["id"] for r in p.responses] == [f"q{i}", f"q{i}"]
    assert a.unmatched == 0 and b.unmatched == 0


def test_roundtrip__fleet_topic_spreads_requests_over_two_agents_stub(make_agent, make_requester, settings):
    s1, s2 = StubService(delay_s=0.05, label="a"), StubService(delay_s=0.05, label="b")
    make_agent("a", s1)
    make_agent("b", s2)
    req = make_requester()
    topic = FleetTopics(settings.topic_prefix).fleet_request
    corrs = [req.send(topic, {**QUERY, "id": f"f{i}"}) for i in range(20)]
    servers = Counter()
    for i, c in enumerate(corrs):
        p = req.wait(c, 20)
        assert len(p.responses) == 1 and p.responses[0]["id"] == f"f{i}"
        servers[p.responses[0]["rootInfo"]["server"]] += 1
    assert sum(servers.values()) == 20
    assert servers["a"] > 0 and servers["b"] > 0, servers
    handled = sorted(s1.seen + s2.seen)
    assert len(handled) == 20 and len(set(handled)) == 20  # none lost, none analysed twice


def test_roundtrip__status_online_and_health_retained_with_expiry(make_agent, settings):
    agent = make_agent("dev1")
    topics = [agent.topics.status, agent.topics.health]
    got = wait_for(lambda: (m := read_retained(settings.port, topics, timeout=0.5)) and len(m) == 2 and m)
    status = json.loads(got[agent.topics.status].payload)
    assert status["state"] == "online" and status["device"] == "dev1" and status["profile"] == "test"
    health_msg = got[agent.topics.health]
    health = json.loads(health_msg.payload)
    assert health["temperature_c"] == 51.0 and health["mqtt"]["connected"] is True
    assert health["device_id"] == "dev1"  # beside whatever the snapshot nests under "device"
    assert 0 < health_msg.properties.MessageExpiryInterval <= settings.health_expiry


def test_roundtrip__mqtt311_fallback_reply_topic_in_payload(make_agent, settings):
    agent = make_agent("dev1")
    replies: list[dict] = []
    done = threading.Event()

    def on_message(client, userdata, msg):
        replies.append(json.loads(msg.payload))
        done.set()

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.on_message = on_message
    c.connect("127.0.0.1", settings.port)
    c.loop_start()
    try:
        c.subscribe("katago/clients/old/reply", qos=1)
        time.sleep(0.2)
        c.publish(
            agent.topics.request, json.dumps({**QUERY, "replyTopic": "katago/clients/old/reply"}), qos=1
        )
        assert done.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()
    assert replies[0]["id"] == "q1" and replies[0]["isDuringSearch"] is False


def test_roundtrip__expired_request_gets_error_reply(make_agent, make_requester):
    agent = make_agent("dev1", StubService(delay_s=1.5))
    req = make_requester()
    first = req.send(agent.topics.request, {**QUERY, "id": "slow"})
    stale = req.send(agent.topics.request, {**QUERY, "id": "stale"}, expiry_s=1)
    assert req.wait(stale, 10).responses == [
        {"id": "stale", "error": "request expired before analysis started"}
    ]
    assert req.wait(first, 10).responses[0]["isDuringSearch"] is False
    wait_for(lambda: agent.stats()["expired"] == 1)


def test_roundtrip__broker_holds_what_the_agent_cannot_take_instead_of_busy(
    make_agent, make_requester, settings
):
    # Receive Maximum = max_concurrent + max_queue = 2: the broker keeps the other requests in the
    # agent's session until a slot frees (acknowledged after the reply), so nothing is refused.
    config = settings.model_copy(update={"max_concurrent": 1, "max_queue": 1})
    agent = make_agent("dev1", StubService(delay_s=0.3), config=config)
    req = make_requester()
    corrs = [req.send(agent.topics.request, {**QUERY, "id": f"b{i}"}) for i in range(5)]
    held = []
    for c in corrs:
        while not req.pending(c).done.is_set():
            s = agent.stats()
            held.append(s["queued"] + s["running"])
            time.sleep(0.02)
    results = [req.wait(c, 10).responses for c in corrs]
    assert [r[-1]["id"] for r in results] == [f"b{i}" for i in range(5)]
    assert all(r[-1]["isDuringSearch"] is False for r in results)
    stats = agent.stats()
    assert stats["busy"] == 0 and stats["answered"] == 5 and max(held) <= 5
    assert wait_for(lambda: agent.stats()["acked"] == 5)


def test_roundtrip__fleet_topic_with_real_services_none_lost_or_duplicated(
    make_agent, make_requester, make_service, settings
):
    s1, s2 = make_service(name="net-a"), make_service(name="net-b")
    make_agent("a", s1)
    make_agent("b", s2)
    req = make_requester()
    topic = FleetTopics(settings.topic_prefix).fleet_request
    corrs = [req.send(topic, {**QUERY, "id": f"f{i}", "maxVisits": 5}) for i in range(20)]
    for i, c in enumerate(corrs):
        responses = req.wait(c, 30).responses
        assert [r["id"] for r in responses] == [f"f{i}"] and responses[0]["isDuringSearch"] is False
    served = [s1.stats()["queries"], s2.stats()["queries"]]
    assert sum(served) == 20 and min(served) > 0, served
