"""A minimal agent process for the MQTT tests: ``python agent_main.py PORT DEVICE [DELAY_S]``.

Serves analysis over MQTT with the test service until SIGTERM/SIGINT (clean stop: status
``stopped``); SIGKILL leaves the broker to publish the last will (status ``offline``).
Prints ``ready`` on stdout once connected.
"""

from __future__ import annotations

import signal
import sys
import threading

from mqtt_support import StubService

from agent.transports.mqtt.transport import MqttSettings, MqttTransport


def main() -> int:
    port, device = int(sys.argv[1]), sys.argv[2]
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = MqttSettings(host="127.0.0.1", port=port, health_interval_s=0.5, reconnect_max_s=2)
    agent = MqttTransport(
        settings, device, StubService(delay_s=delay).handle_query, status_info={"engine": "stub"}
    )
    agent.start()
    if not agent.wait_connected(10):
        return 1
    print("ready", flush=True)
    stop.wait()
    agent.stop(clean=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
