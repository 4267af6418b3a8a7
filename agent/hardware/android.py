"""Android probe (Termux): device model, SoC and API level from system properties.

Properties come from ``build.prop``-style files (``key=value`` lines) under ``root``:
``/system/build.prop``, ``/vendor/build.prop``, ``/product/build.prop``, later files not
overriding earlier ones. On a real device (``root`` is ``/``) an app cannot always read those
files, so ``getprop`` is run as well (``[key]: [value]`` lines), with a timeout.

Keys used (pytorch/cpuinfo ``src/arm/android/properties.c``; AOSP ``SocProperties.sysprop``):
``ro.product.model``, ``ro.product.manufacturer``, ``ro.build.version.sdk`` / ``.release``,
``ro.product.cpu.abilist``, ``ro.board.platform`` (``sdm845``), and ``ro.soc.manufacturer`` /
``ro.soc.model`` which exist from Android 12 (API 31).

Termux is recognised by ``TERMUX_VERSION`` or ``/data/data/com.termux``; on Android,
``/proc/stat`` is unreadable since Android 8, which the health snapshot reports as absent.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.hardware._files import read_text, under

logger = logging.getLogger(__name__)

PROP_FILES = ("/system/build.prop", "/vendor/build.prop", "/product/build.prop", "/default.prop")
GETPROP_TIMEOUT_S = 3.0
_GETPROP_RE = re.compile(r"^\[(?P<key>[^\]]+)\]: \[(?P<value>.*)\]$")


@dataclass(frozen=True)
class AndroidInfo:
    model: str  # "samsung SM-G960U"
    manufacturer: str | None
    device_model: str | None
    sdk: int | None
    release: str | None
    soc: str | None  # ro.soc.model, else ro.board.platform
    abis: tuple[str, ...] = ()
    termux: bool = False
    properties: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)


def parse_build_prop(text: str) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        props.setdefault(key.strip(), value.strip())
    return props


def parse_getprop(text: str) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in text.splitlines():
        match = _GETPROP_RE.match(line.strip())
        if match:
            props[match.group("key")] = match.group("value")
    return props


def _run_getprop() -> dict[str, str]:
    exe = shutil.which("getprop")
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=GETPROP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("getprop failed: %s", exc)
        return {}
    return parse_getprop(out.stdout)


def _is_termux(root: Path) -> bool:
    if under(root, "/data/data/com.termux").is_dir():
        return True
    return root == Path("/") and "TERMUX_VERSION" in os.environ


def probe_android(root: Path = Path("/")) -> AndroidInfo | None:
    """Android facts, or None when the device under ``root`` is not Android."""
    props: dict[str, str] = {}
    for path in PROP_FILES:
        text = read_text(root, path)
        if text:
            for key, value in parse_build_prop(text).items():
                props.setdefault(key, value)
    termux = _is_termux(root)
    if root == Path("/") and (termux or props):
        for key, value in _run_getprop().items():
            props.setdefault(key, value)
    if not props and not termux:
        return None
    manufacturer = props.get("ro.product.manufacturer") or props.get("ro.product.vendor.manufacturer")
    device_model = props.get("ro.product.model") or props.get("ro.product.vendor.model")
    sdk_text = props.get("ro.build.version.sdk", "")
    label = " ".join(p for p in (manufacturer, device_model) if p) or "Android device"
    abis = props.get("ro.product.cpu.abilist", "")
    return AndroidInfo(
        model=label,
        manufacturer=manufacturer,
        device_model=device_model,
        sdk=int(sdk_text) if sdk_text.isdigit() else None,
        release=props.get("ro.build.version.release"),
        soc=props.get("ro.soc.model") or props.get("ro.board.platform") or props.get("ro.hardware"),
        abis=tuple(a for a in abis.split(",") if a),
        termux=termux,
        properties=props,
    )
