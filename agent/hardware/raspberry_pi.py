"""Raspberry Pi probe: model string, revision-code decoding and the throttling bits.

Sources (see ``../shared/docs/device-and-fleet-notes.md`` §3.1):

* ``/proc/device-tree/model`` (NUL-terminated), e.g. ``Raspberry Pi 5 Model B Rev 1.0``;
  ``/proc/device-tree/compatible`` starts with ``raspberrypi,...``. Depending on the kernel,
  ``/proc/cpuinfo`` also has ``Model :``.
* ``/proc/cpuinfo`` ``Revision``: a new-style code is the bit field
  ``NOQuuuWuFMMMCCCCPPPPTTTTTTTTRRRR`` (raspberrypi/documentation
  ``computers/raspberry-pi/revision-codes.adoc``). The docs advise filtering on the *type* and
  *memory* fields, never on a whole-code allow-list. Worked example: ``c03111`` is new-style,
  memory 4 (4 GB), Sony UK, BCM2711, type 0x11 (4B), revision 1. The ``Hardware`` line says
  ``BCM2835`` on every model and must not be used to tell the SoC.
* ``vcgencmd get_throttled`` (``throttled=0x50005``) or the sysfs file
  ``/sys/devices/platform/soc/soc:firmware/get_throttled`` (the same number in hex): "lower
  16-bits are the live value, upper 16-bits are the history or sticky value" (kernel commit
  be3035e3627d, "ARM: bcm2835: Add GET_THROTTLED firmware property").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.hardware._files import read_dt_strings, read_text, under
from agent.hardware.cpu import cpuinfo_trailer

#: Board type field (bits 4-11). Source: raspberrypi/documentation revision-codes.adoc.
PI_TYPES: dict[int, str] = {
    0x00: "A",
    0x01: "B",
    0x02: "A+",
    0x03: "B+",
    0x04: "2B",
    0x05: "Alpha",
    0x06: "CM1",
    0x08: "3B",
    0x09: "Zero",
    0x0A: "CM3",
    0x0C: "Zero W",
    0x0D: "3B+",
    0x0E: "3A+",
    0x10: "CM3+",
    0x11: "4B",
    0x12: "Zero 2 W",
    0x13: "400",
    0x14: "CM4",
    0x15: "CM4S",
    0x17: "5",
    0x18: "CM5",
    0x19: "500",
    0x1A: "CM5 Lite",
    0x1B: "CM0",
}

#: Processor field (bits 12-15). Source: revision-codes.adoc.
PI_PROCESSORS: dict[int, str] = {0: "BCM2835", 1: "BCM2836", 2: "BCM2837", 3: "BCM2711", 4: "BCM2712"}

#: Memory field (bits 20-22) in MB; 7 means "other" (read ``rpi-sdram-size-gbit``). Source:
#: revision-codes.adoc (Adafruit PlatformDetect's table stops at 8 GB and lacks 16 GB).
PI_MEMORY_MB: dict[int, int] = {0: 256, 1: 512, 2: 1024, 3: 2048, 4: 4096, 5: 8192, 6: 16384}

#: Manufacturer field (bits 16-19). Source: revision-codes.adoc.
PI_MANUFACTURERS: dict[int, str] = {
    0: "Sony UK",
    1: "Egoman",
    2: "Embest",
    3: "Sony Japan",
    4: "Embest",
    5: "Stadium",
}

#: get_throttled bits. Source: https://www.raspberrypi.com/documentation/computers/os.html#get_throttled
THROTTLE_BITS: dict[str, int] = {
    "under_voltage": 0,
    "arm_frequency_capped": 1,
    "throttled": 2,
    "soft_temperature_limit": 3,
}
THROTTLE_HISTORY_SHIFT = 16
THROTTLED_SYSFS = "/sys/devices/platform/soc/soc:firmware/get_throttled"


@dataclass(frozen=True)
class PiRevision:
    code: int
    new_style: bool
    type_code: int | None
    type_name: str | None
    processor: str | None
    memory_mb: int | None
    manufacturer: str | None
    revision: int

    @property
    def hex(self) -> str:
        return f"{self.code:x}"


@dataclass(frozen=True)
class RaspberryPiInfo:
    model: str  # "Raspberry Pi 4 Model B Rev 1.4"
    compatible: tuple[str, ...]
    revision: PiRevision | None

    @property
    def type_name(self) -> str | None:
        return self.revision.type_name if self.revision else None


@dataclass(frozen=True)
class ThrottleState:
    """Decoded ``get_throttled`` value: conditions now and since boot."""

    raw: int
    now: frozenset[str]
    since_boot: frozenset[str]

    def to_dict(self) -> dict[str, object]:
        return {
            "raw": f"{self.raw:#x}",
            "now": sorted(self.now),
            "since_boot": sorted(self.since_boot),
            "under_voltage_now": "under_voltage" in self.now,
            "under_voltage_since_boot": "under_voltage" in self.since_boot,
            "throttled_now": "throttled" in self.now,
            "throttled_since_boot": "throttled" in self.since_boot,
        }


def decode_revision(code: int) -> PiRevision:
    """Decode a ``/proc/cpuinfo`` Revision; old-style codes keep only ``code`` and ``revision``."""
    new_style = bool(code & (1 << 23))
    if not new_style:
        return PiRevision(code, False, None, None, None, None, None, code & 0xFFFF)
    type_code = (code >> 4) & 0xFF
    return PiRevision(
        code=code,
        new_style=True,
        type_code=type_code,
        type_name=PI_TYPES.get(type_code),
        processor=PI_PROCESSORS.get((code >> 12) & 0xF),
        memory_mb=PI_MEMORY_MB.get((code >> 20) & 0x7),
        manufacturer=PI_MANUFACTURERS.get((code >> 16) & 0xF),
        revision=code & 0xF,
    )


def decode_throttled(value: int) -> ThrottleState:
    now = frozenset(name for name, bit in THROTTLE_BITS.items() if value & (1 << bit))
    past = frozenset(
        name for name, bit in THROTTLE_BITS.items() if value & (1 << (bit + THROTTLE_HISTORY_SHIFT))
    )
    return ThrottleState(raw=value, now=now, since_boot=past)


def parse_throttled(text: str) -> ThrottleState | None:
    """Parse ``vcgencmd get_throttled`` output (``throttled=0x50005``) or the sysfs file (``50005``)."""
    match = re.search(r"(?:throttled=)?(?:0x)?([0-9a-fA-F]+)", text.strip())
    if not match:
        return None
    return decode_throttled(int(match.group(1), 16))


def read_throttled(root: Path = Path("/")) -> ThrottleState | None:
    """The throttling state from sysfs under ``root`` (no subprocess; see health for vcgencmd)."""
    text = read_text(root, THROTTLED_SYSFS)
    return parse_throttled(text) if text else None


def read_undervoltage_hwmon(root: Path = Path("/")) -> bool | None:
    """Under-voltage now from the ``rpi_volt`` hwmon device (``in0_lcrit_alarm``), or None.

    Newer kernels mark the ``get_throttled`` sysfs file deprecated ("use hwmon sysfs instead") and
    expose only the live under-voltage alarm there (the kernel's ``raspberrypi-hwmon`` driver).
    """
    base = under(root, "/sys/class/hwmon")
    try:
        devices = sorted(base.iterdir())
    except OSError:
        return None
    for dev in devices:
        name = read_text(root, f"/sys/class/hwmon/{dev.name}/name")
        if name is not None and name.strip() == "rpi_volt":
            alarm = read_text(root, f"/sys/class/hwmon/{dev.name}/in0_lcrit_alarm")
            if alarm is not None and alarm.strip() in ("0", "1"):
                return alarm.strip() == "1"
    return None


def probe_raspberry_pi(root: Path = Path("/")) -> RaspberryPiInfo | None:
    """Pi facts, or None when the device under ``root`` is not a Raspberry Pi."""
    compatible = tuple(read_dt_strings(root, "/proc/device-tree/compatible"))
    models = read_dt_strings(root, "/proc/device-tree/model")
    trailer = cpuinfo_trailer(root)
    model = models[0] if models else trailer.get("model", "")
    is_pi = model.startswith("Raspberry Pi") or any(c.startswith("raspberrypi,") for c in compatible)
    if not is_pi:
        return None
    revision = None
    code = trailer.get("revision")
    if code:
        try:
            revision = decode_revision(int(code, 16))
        except ValueError:
            revision = None
    if not model and revision and revision.type_name:
        model = f"Raspberry Pi {revision.type_name}"
    return RaspberryPiInfo(model=model or "Raspberry Pi", compatible=compatible, revision=revision)
