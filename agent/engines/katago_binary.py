"""Finding a KataGo binary, its settings, and the analysis config we generate for it.

Where a binary comes from, first match wins (:func:`find_katago`):

1. an explicit path (``[katago] binary`` in the agent config, ``--katago PATH`` on the CLI);
2. ``katago`` on ``PATH`` (a distribution package, KataGo's own CUDA/TensorRT build on a Jetson,
   the Eigen build on a Pi);
3. the ``katrain`` wheel from PyPI (:func:`ensure_katrain_katago`). ``katrain`` 1.20.0 ships
   ``katrain/KataGo/katago``: KataGo v1.18.1 for Linux x86-64 with the **OpenCL** backend, packed
   as an AppImage. We extract the AppImage once (``--appimage-extract``, which needs no FUSE)
   and run ``squashfs-root/usr/bin/katago`` with ``LD_LIBRARY_PATH`` at its bundled libraries
   (libzip, libz, libbz2). On a machine without a GPU, Debian's PoCL (``pocl-opencl-icd`` +
   ``ocl-icd-libopencl1``) provides an OpenCL CPU device. An AppImage given by path is run
   with ``APPIMAGE_EXTRACT_AND_RUN=1`` so that it works without FUSE.

OpenCL tuning: on its first run for a (device, board size, trunk width, model version) the OpenCL
backend tunes its kernels and stores the result under ``<homeDataDir>/opencltuning/``. On PoCL
with two cores this took 7 minutes for g170-b6c96. ``opencl_tuning = "generic"`` instead points
``openclTunerFile`` at a parameter set we write ourselves (valid for any device, tuned on
PoCL/x86-64), so a cold start takes seconds; ``"tune"`` lets KataGo tune once per device, cached
in ``homeDataDir`` (``<cache_dir>/katago-home`` unless set); ``"auto"`` (default) picks generic
when PoCL is the only OpenCL driver and tune otherwise.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import EngineError
from agent.fsutil import default_cache_dir, file_lock

logger = logging.getLogger(__name__)

KATRAIN_VERSION = "1.20.0"
KATRAIN_KATAGO_MEMBER = "katrain/KataGo/katago"
KATRAIN_DIR_NAME = f"katrain-{KATRAIN_VERSION}-katago"
PIP_DOWNLOAD_TIMEOUT_S = 900.0
EXTRACT_TIMEOUT_S = 300.0

Backend = Literal["auto", "opencl", "cuda", "tensorrt", "eigen", "metal"]
ConfigValue = str | int | float | bool


class KataGoSettings(BaseModel):
    """``[katago]`` in the agent config: the binary, the config we generate, and supervision."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    binary: Path | None = Field(default=None, description="katago executable; unset = PATH, then katrain")
    config: Path | None = Field(
        default=None, description="your own analysis .cfg; unset = generated from the keys below"
    )
    download: bool = Field(default=True, description="may fetch the katrain wheel from PyPI when needed")
    cache_dir: Path | None = Field(default=None, description="unset = ~/.cache/katago-edge")
    home_data_dir: Path | None = Field(
        default=None, description="KataGo homeDataDir; unset = <cache>/katago-home"
    )
    backend: Backend = Field(default="auto", description="names the backend's device/FP16 keys; auto = none")
    device: int | None = Field(default=None, ge=0, description="GPU index for the backend's DeviceToUse key")
    use_fp16: Literal["auto", "true", "false"] = "auto"
    num_analysis_threads: int = Field(default=2, ge=1, le=1024)
    num_search_threads_per_analysis_thread: int = Field(default=1, ge=1, le=1024)
    nn_max_batch_size: int = Field(default=8, ge=1, le=4096)
    nn_cache_size_power_of_two: int = Field(default=18, ge=0, le=48)
    nn_mutex_pool_size_power_of_two: int = Field(default=14, ge=0, le=32)
    num_eigen_threads_per_model: int | None = Field(default=None, ge=1, le=1024)
    max_visits: int | None = Field(default=None, ge=1)
    report_analysis_winrates_as: Literal["BLACK", "WHITE", "SIDETOMOVE"] = "BLACK"
    log_all_requests: bool = False
    log_all_responses: bool = False
    log_search_info: bool = False
    opencl_tuning: Literal["auto", "generic", "tune"] = Field(
        default="auto",
        description="generic = skip KataGo's first-run OpenCL tuning; tune = let KataGo tune once; "
        "auto = generic when the only OpenCL driver is PoCL (a CPU), else tune",
    )
    opencl_tuner_file: Path | None = Field(default=None, description="explicit openclTunerFile")
    extra: dict[str, ConfigValue] = Field(default_factory=dict, description="more KataGo config keys")
    # supervision
    start_timeout_s: float = Field(default=900.0, gt=0, description="child start incl. OpenCL tuning")
    restart_budget: int = Field(default=5, ge=0, description="restarts allowed per restart_window_s")
    restart_window_s: float = Field(default=60.0, gt=0)
    restart_backoff_s: float = Field(default=0.5, ge=0, description="first restart delay, doubled up to 8 s")
    hang_timeout_s: float = Field(default=120.0, gt=0, description="no output while work pending -> kill")
    query_timeout_s: float | None = Field(default=None, gt=0, description="terminate queries older than this")
    stderr_tail_lines: int = Field(default=40, ge=1, le=10000)

    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or default_cache_dir()).expanduser()


@dataclass(frozen=True)
class KataGoBinary:
    """An executable plus the environment it needs (bundled libraries, AppImage without FUSE)."""

    path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    source: str = "explicit"

    def environ(self) -> dict[str, str]:
        out = dict(os.environ)
        for key, value in self.env.items():
            if key == "LD_LIBRARY_PATH" and out.get(key):
                value = value + os.pathsep + out[key]
            out[key] = value
        return out


def binary_from_path(path: Path, source: str = "explicit") -> KataGoBinary:
    """Wrap a given executable; an AppImage gets ``APPIMAGE_EXTRACT_AND_RUN=1``, an extracted one its libs."""
    path = path.expanduser()
    if not path.is_file():
        raise EngineError(f"KataGo binary {path} does not exist")
    if not os.access(path, os.X_OK):
        raise EngineError(f"KataGo binary {path} is not executable (chmod +x it)")
    env: dict[str, str] = {}
    if _is_appimage(path):
        env["APPIMAGE_EXTRACT_AND_RUN"] = "1"
    libdir = path.parent.parent / "lib"
    if path.parent.name == "bin" and (path.parent.parent.parent / "AppRun").exists() and libdir.is_dir():
        env["LD_LIBRARY_PATH"] = str(libdir)
    return KataGoBinary(path=path, env=env, source=source)


def _is_appimage(path: Path) -> bool:
    """AppImage type 2: an ELF with the magic bytes ``AI\\x02`` at offset 8."""
    try:
        with path.open("rb") as fh:
            head = fh.read(11)
    except OSError:
        return False
    return head[:4] == b"\x7fELF" and head[8:11] == b"AI\x02"


def find_katago(
    explicit: Path | None = None, cache_dir: Path | None = None, *, download: bool = False
) -> KataGoBinary:
    """The binary to run: explicit path, ``katago`` on PATH, the cached katrain one, or a download."""
    if explicit is not None:
        return binary_from_path(explicit)
    on_path = shutil.which("katago")
    if on_path:
        return binary_from_path(Path(on_path), source="PATH")
    cache = (cache_dir or default_cache_dir()).expanduser()
    cached = _katrain_binary_path(cache)
    if cached.is_file():
        return binary_from_path(cached, source="katrain")
    if not download:
        raise EngineError(
            "no KataGo binary: give its path (--katago PATH / [katago] binary), put katago on PATH, "
            f"or allow fetching it from the katrain {KATRAIN_VERSION} wheel (download = true)"
        )
    _check_katrain_platform()
    return binary_from_path(ensure_katrain_katago(cache), source="katrain")


def _check_katrain_platform(machine: str | None = None) -> None:
    """The katrain wheel's KataGo is a Linux x86-64 AppImage: say so before a 106 MB download that
    could only end in "Exec format error" on an ARM board."""
    machine = machine or platform.machine()
    if sys.platform != "linux" or machine.lower() not in ("x86_64", "amd64"):
        raise EngineError(
            f"the katrain {KATRAIN_VERSION} wheel carries KataGo for Linux x86-64 only, and this machine is "
            f"{sys.platform}/{machine}: build KataGo from source (Eigen CPU backend; on a Jetson the CUDA "
            "or TensorRT backend) and give its path (--katago PATH / [katago] binary), or serve the "
            "network in-process (engine = native)"
        )


def _katrain_binary_path(cache_dir: Path) -> Path:
    return cache_dir / KATRAIN_DIR_NAME / "squashfs-root" / "usr" / "bin" / "katago"


def ensure_katrain_katago(cache_dir: Path | None = None, wheel: Path | None = None) -> Path:
    """Fetch ``katrain==1.20.0`` once, extract its KataGo AppImage; returns ``.../usr/bin/katago``.

    ``pip download --no-deps`` gets the wheel (~106 MB) into a temp folder inside the cache; the
    AppImage (``katrain/KataGo/katago``) is taken out of it, unpacked with ``--appimage-extract``
    and the result renamed into ``<cache>/katrain-1.20.0-katago/`` in one step, so a reader
    sees no half-extracted tree. The wheel is deleted afterwards (only ~130 MB of binary stay).
    ``wheel`` uses an already downloaded wheel instead.
    """
    cache = (cache_dir or default_cache_dir()).expanduser()
    target = _katrain_binary_path(cache)
    if target.is_file():
        return target
    with file_lock(cache / ".katrain.lock"):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=cache, prefix=".katrain-") as tmp_name:
            tmp = Path(tmp_name)
            wheel_path = wheel or _pip_download_katrain(tmp)
            appimage = tmp / "katago.AppImage"
            try:
                with (
                    zipfile.ZipFile(wheel_path) as zf,
                    zf.open(KATRAIN_KATAGO_MEMBER) as src,
                    appimage.open("wb") as dst,
                ):
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, KeyError, zipfile.BadZipFile) as exc:
                raise EngineError(f"cannot take {KATRAIN_KATAGO_MEMBER} out of {wheel_path}: {exc}") from exc
            appimage.chmod(0o755)
            out_dir = tmp / KATRAIN_DIR_NAME
            out_dir.mkdir()
            _run(
                [str(appimage), "--appimage-extract"], cwd=out_dir, timeout=EXTRACT_TIMEOUT_S, what="extract"
            )
            extracted = out_dir / "squashfs-root" / "usr" / "bin" / "katago"
            if not extracted.is_file():
                raise EngineError(f"the katrain AppImage did not contain usr/bin/katago ({out_dir})")
            final = cache / KATRAIN_DIR_NAME
            if final.exists():  # a stale partial tree from an older layout
                shutil.rmtree(final)
            os.replace(out_dir, final)
    logger.info("KataGo from katrain %s extracted to %s", KATRAIN_VERSION, target)
    return target


def _pip_download_katrain(dest: Path) -> Path:
    logger.info("downloading katrain==%s from PyPI (about 106 MB) for its KataGo binary", KATRAIN_VERSION)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
    _run(
        [*cmd, "-d", str(dest), f"katrain=={KATRAIN_VERSION}"],
        cwd=dest,
        timeout=PIP_DOWNLOAD_TIMEOUT_S,
        what="pip download",
    )
    wheels = sorted(dest.glob(f"katrain-{KATRAIN_VERSION}-*.whl"))
    if not wheels:
        raise EngineError(f"pip download katrain=={KATRAIN_VERSION} produced no wheel in {dest}")
    return wheels[0]


def _run(cmd: list[str], *, cwd: Path, timeout: float, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{what} took longer than {timeout:.0f} s: {' '.join(cmd)}") from exc
    except OSError as exc:
        raise EngineError(f"{what} could not run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise EngineError(f"{what} failed (exit code {proc.returncode}): {tail}")


def opencl_available() -> str | None:
    """``None`` when an OpenCL ICD loader and at least one ICD are installed, else what is missing."""
    import ctypes.util

    if ctypes.util.find_library("OpenCL") is None:
        return "no libOpenCL (apt-get install ocl-icd-libopencl1)"
    vendors = Path(os.environ.get("OCL_ICD_VENDORS", "/etc/OpenCL/vendors"))
    if not (vendors.is_dir() and any(vendors.glob("*.icd"))):
        return f"no OpenCL driver in {vendors} (apt-get install pocl-opencl-icd)"
    return None
