"""Raspberry Pi revision codes and get_throttled bits (raspberrypi/documentation tables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.hardware.raspberry_pi import decode_revision, decode_throttled, parse_throttled, read_throttled

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize(
    ("code", "type_name", "processor", "memory_mb", "manufacturer", "revision"),
    [
        ("a02082", "3B", "BCM2837", 1024, "Sony UK", 2),
        ("a22082", "3B", "BCM2837", 1024, "Embest", 2),
        ("9000c1", "Zero W", "BCM2835", 512, "Sony UK", 1),
        ("902120", "Zero 2 W", "BCM2837", 512, "Sony UK", 0),
        ("a020d3", "3B+", "BCM2837", 1024, "Sony UK", 3),
        ("c03111", "4B", "BCM2711", 4096, "Sony UK", 1),  # the docs' worked example
        ("d03114", "4B", "BCM2711", 8192, "Sony UK", 4),
        ("c03130", "400", "BCM2711", 4096, "Sony UK", 0),
        ("d04170", "5", "BCM2712", 8192, "Sony UK", 0),
        ("e04171", "5", "BCM2712", 16384, "Sony UK", 1),
        ("b04180", "CM5", "BCM2712", 2048, "Sony UK", 0),
    ],
)
def test_decode_revision__documented_codes(
    code: str, type_name: str, processor: str, memory_mb: int, manufacturer: str, revision: int
) -> None:
    r = decode_revision(int(code, 16))
    assert r.new_style
    assert (r.type_name, r.processor, r.memory_mb, r.manufacturer, r.revision) == (
        type_name,
        processor,
        memory_mb,
        manufacturer,
        revision,
    )
    assert r.hex == code


def test_decode_revision__old_style_code_keeps_no_fields() -> None:
    r = decode_revision(0x000E)  # a 2012 Model B: bit 23 clear
    assert not r.new_style
    assert r.type_name is None and r.memory_mb is None


@pytest.mark.parametrize(
    ("text", "now", "since_boot"),
    [
        ("throttled=0x0", set(), set()),
        ("throttled=0x50000", set(), {"under_voltage", "throttled"}),
        ("throttled=0x50005", {"under_voltage", "throttled"}, {"under_voltage", "throttled"}),
        ("throttled=0x80008", {"soft_temperature_limit"}, {"soft_temperature_limit"}),
        ("throttled=0x20002\n", {"arm_frequency_capped"}, {"arm_frequency_capped"}),
        ("50005\n", {"under_voltage", "throttled"}, {"under_voltage", "throttled"}),  # sysfs form
    ],
)
def test_parse_throttled__vcgencmd_and_sysfs(text: str, now: set[str], since_boot: set[str]) -> None:
    state = parse_throttled(text)
    assert state is not None
    assert set(state.now) == now
    assert set(state.since_boot) == since_boot


def test_decode_throttled__to_dict_flags() -> None:
    d = decode_throttled(0x50000).to_dict()
    assert d["raw"] == "0x50000"
    assert d["under_voltage_now"] is False and d["under_voltage_since_boot"] is True
    assert d["throttled_now"] is False and d["throttled_since_boot"] is True


@pytest.mark.parametrize(
    ("device", "raw", "under_voltage_now", "under_voltage_since_boot"),
    [
        ("raspberry-pi-3b", 0x50005, True, True),
        ("raspberry-pi-4b-4gb", 0x50000, False, True),
        ("raspberry-pi-5-8gb", 0x0, False, False),
        ("raspberry-pi-zero-2w", 0x80008, False, False),
    ],
)
def test_read_throttled__fixture_sysfs(
    device: str, raw: int, under_voltage_now: bool, under_voltage_since_boot: bool
) -> None:
    state = read_throttled(FIXTURES / device)
    assert state is not None and state.raw == raw
    assert ("under_voltage" in state.now) is under_voltage_now
    assert ("under_voltage" in state.since_boot) is under_voltage_since_boot


def test_read_throttled__absent_off_a_pi() -> None:
    assert read_throttled(FIXTURES / "x86-64-avx2-laptop") is None
