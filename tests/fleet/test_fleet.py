"""``katago-edge fleet`` and ``katago-edge query`` against real agents on a real broker."""

from __future__ import annotations

import json

import pytest
from mqtt_support import wait_for

from agent.cli.main import run
from agent.errors import QueryError
from agent.fleet.monitor import DeviceView, summarize
from agent.fleet.view import parse_moves


def test_fleet__json_once_lists_two_running_agents_with_health(make_agent, settings, capsys):
    a, b = make_agent("pi-a"), make_agent("jetson-b")
    for agent in (a, b):
        wait_for(lambda agent=agent: agent.stats()["connects"] == 1)
    capsys.readouterr()
    rc = run(["fleet", "--broker", f"127.0.0.1:{settings.port}", "--json", "--once"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    rows = {r["device"]: r for r in out["devices"]}
    assert set(rows) == {"pi-a", "jetson-b"}
    for row in rows.values():
        assert row["state"] == "online" and row["profile"] == "test" and row["engine"] == "stub"
        assert row["temperature_c"] == 51.0 and row["cpu_percent"] == 12.5 and row["memory_percent"] == 40.0
        assert row["health"]["mqtt"]["connected"] is True and row["errors"] == 0


def test_fleet__stopped_device_shows_stopped(make_agent, settings, capsys):
    agent = make_agent("gone")
    agent.stop(clean=True)
    capsys.readouterr()
    assert run(["fleet", "--broker", f"127.0.0.1:{settings.port}", "--json", "--once"]) == 0
    rows = json.loads(capsys.readouterr().out)["devices"]
    assert [(r["device"], r["state"]) for r in rows] == [("gone", "stopped")]


def test_fleet__table_once_renders(make_agent, settings, capsys):
    make_agent("pi-a")
    assert run(["fleet", "--broker", f"127.0.0.1:{settings.port}", "--once"]) == 0
    out = capsys.readouterr().out
    assert "pi-a" in out and "online" in out and "51.0 °C" in out


def test_fleet__summarize_reads_health_snapshot_fields_and_flags_stale():
    health = {
        "cpu": {"percent": 87.5},
        "memory": {"used_percent": 61.0},
        "temperatures": {"cpu-thermal": 82.3, "gpu": 70.1},
        "throttling": {"now": ["soft_temperature_limit"]},
        "engine": {"evals_per_s": 210.0, "queue_depth": 2, "failed": 1},
        "mqtt": {"queued": 3, "malformed": 4, "timeouts": 0},
    }
    view = DeviceView(
        "pi5", {"state": "online", "profile": "pi5-cpu", "runtime": "onnx"}, health, 100.0, 100.0
    )
    row = summarize(view, now=250.0, stale_after_s=90.0)
    assert row["state"] == "stale" and row["last_seen_s"] == 150.0
    assert row["temperature_c"] == 82.3 and row["throttled"] == ["soft_temperature_limit"]
    assert row["cpu_percent"] == 87.5 and row["memory_percent"] == 61.0 and row["evals_per_s"] == 210.0
    assert row["queue"] == 5 and row["errors"] == 5 and row["engine"] == "onnx"


def test_query__real_service_answers_and_prints_json(make_agent, real_service, settings, capsys):
    make_agent("dev1", real_service)
    rc = run(
        ["query", "--device", "dev1", "--broker", f"127.0.0.1:{settings.port}", "--moves", "B:D4", "W:F6",
         "--board-size", "9", "--visits", "12", "--id", "cli1", "--json"]
    )  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    final = lines[-1]
    assert final["id"] == "cli1" and final["isDuringSearch"] is False and final["turnNumber"] == 2
    assert final["rootInfo"]["visits"] >= 12 and final["moveInfos"]


def test_query__error_reply_exits_1(make_agent, real_service, settings, capsys):
    make_agent("dev1", real_service)
    rc = run(["query", "--device", "dev1", "--broker", f"127.0.0.1:{settings.port}", "--moves", "B:Z99"])
    assert rc == 1
    assert "error" in capsys.readouterr().err


def test_query__no_agent_times_out_with_exit_3(broker, capsys):
    rc = run(["query", "--device", "nobody", "--broker", f"127.0.0.1:{broker.port}", "--timeout", "0.5"])
    assert rc == 3
    assert "no final reply" in capsys.readouterr().err


def test_query__table_output(make_agent, real_service, settings, capsys):
    make_agent("dev1", real_service)
    rc = run(
        [
            "query",
            "--device",
            "dev1",
            "--broker",
            f"127.0.0.1:{settings.port}",
            "--board-size",
            "9",
            "--visits",
            "8",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "winrate" in out and "round trip" in out


def test_fleet__online_without_health_is_stale():
    view = DeviceView("ghost", {"state": "online"}, None, None, None)
    row = summarize(view, now=1000.0, stale_after_s=90.0)
    assert row["state"] == "stale" and row["last_seen_s"] is None


def test_fleet__summarize_reads_the_daemon_health_layout():
    """The daemon nests the device snapshot under ``device`` and engine stats under ``service.engine``."""
    health = {
        "agent": {"profile": "jetson-orin-trt", "engine": "native"},
        "service": {"engine": {"evals_per_s": 1500.0, "queue_depth": 1, "failed": 0}},
        "device": {
            "cpu": {"percent": 20.0},
            "memory": {"used_percent": 30.0},
            "temperatures": {"cpu-thermal": 55.0},
            "throttling": None,
            "thermal": {"temperature_c": 55.0},
        },
        "mqtt": {"queued": 0, "malformed": 0},
    }
    view = DeviceView("orin", {"state": "online"}, health, 100.0, 101.0)
    row = summarize(view, now=102.0, stale_after_s=90.0)
    assert row["state"] == "online" and row["last_seen_s"] == 1.0
    assert (row["profile"], row["engine"]) == ("jetson-orin-trt", "native")
    assert row["temperature_c"] == 55.0 and row["throttled"] is False
    assert (row["cpu_percent"], row["memory_percent"], row["evals_per_s"], row["queue"]) == (
        20.0,
        30.0,
        1500.0,
        1,
    )


def test_query__sgf_position_is_sent_with_its_rules_komi_and_size(
    make_agent, real_service, settings, tmp_path, capsys
):
    sgf = tmp_path / "g.sgf"
    sgf.write_text("(;GM[1]FF[4]SZ[9]KM[6.5]RU[Japanese]AB[cc];W[ee];B[gg])")
    make_agent("dev1", real_service)
    argv = ["query", "--device", "dev1", "--broker", f"127.0.0.1:{settings.port}", "--sgf", str(sgf)]
    assert run([*argv, "--visits", "5", "--json"]) == 0
    final = [json.loads(line) for line in capsys.readouterr().out.splitlines()][-1]
    assert final["turnNumber"] == 2 and final["isDuringSearch"] is False


@pytest.mark.parametrize(
    ("tokens", "moves"),
    [
        (["D4", "Q16", "pass"], [["B", "D4"], ["W", "Q16"], ["B", "pass"]]),
        (["W:D4", "b:Q16"], [["W", "D4"], ["B", "Q16"]]),
        (['[["B","C3"],["W","D4"]]'], [["B", "C3"], ["W", "D4"]]),
    ],
)
def test_query__parse_moves_forms(tokens, moves):
    assert parse_moves(tokens) == moves


def test_query__parse_moves_rejects_bad_player():
    with pytest.raises(QueryError, match="bad player"):
        parse_moves(["X:D4"])


def test_fleet__live_table_runs_until_interrupted(make_agent, settings):
    """The live table shows the device, then ends on Ctrl-C (exit code 130). Interrupted once the
    table shows the device online, not after a fixed time (a loaded machine may still be starting
    Python or connecting then): rich is told it writes to a terminal, so that it draws as it goes."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    make_agent("pi-live")
    cmd = [
        sys.executable,
        "-m",
        "agent.cli.main",
        "fleet",
        "--broker",
        f"127.0.0.1:{settings.port}",
        "--refresh",
        "0.2",
    ]
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    drawn = bytearray()

    def read_stdout() -> None:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            drawn.extend(chunk)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        wait_for(lambda: b"pi-live" in drawn and b"online" in drawn, 60, what="the table showing pi-live")
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    out = drawn.decode(errors="replace")
    assert proc.returncode == 130, err
    assert "pi-live" in out and "online" in out


def test_query__uses_the_agent_config_mqtt_table(make_agent, settings, tmp_path, capsys):
    make_agent("dev1")
    config = tmp_path / "agent.toml"
    config.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {settings.port}\nclient_id = "the-agent"\n')
    rc = run(["query", "--config", str(config), "--device", "dev1", "--board-size", "9", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["isDuringSearch"] is False
