"""The ``katago analysis`` config we generate from ``KataGoSettings``, written atomically.

Keys: logging to stderr (the supervisor routes it into our log), ``homeDataDir``, the perspective
of reported values, threads, batch and cache sizes, the backend's device and FP16 keys, and the
OpenCL tuner file. A user's own ``.cfg`` is used as is, with the few keys the supervisor needs
passed through ``-override-config``.

OpenCL tuning: on its first run for a (device, board size, trunk width, model version) KataGo's
OpenCL backend times its kernels and stores the result in ``<homeDataDir>/opencltuning/``; on PoCL
with two cores that took 7 minutes for g170-b6c96. ``GENERIC_OPENCL_TUNING`` is a complete tuner
file that skips it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from agent.engines.katago_binary import ConfigValue, KataGoSettings
from agent.errors import EngineError
from agent.fsutil import atomic_write_text

# OpenCL tuning parameters in KataGo's tuner-file format (VERSION=13, KataGo v1.18): the result of
# KataGo's own tuner on PoCL (x86-64, AVX-512). Every value is a legal kernel parameter on any
# OpenCL 1.2 device; a GPU runs faster after its own tuning (``opencl_tuning = "auto"``).
GENERIC_OPENCL_TUNING = """VERSION=13
#canUseFP16Storage
0
#canUseFP16Compute
0
#canUseFP16TensorCores
0
#canUseFP16TensorCoresFor1x1
0
#shouldUseFP16Storage
0
#shouldUseFP16Compute
0
#shouldUseFP16TensorCores
0
#shouldUseFP16TensorCoresFor1x1
0
#xGemmDirect
WGD=32 MDIMCD=8 NDIMCD=8 MDIMAD=8 NDIMBD=8 KWID=2 VWMD=2 VWND=4 PADA=1 PADB=1
#xGemm
MWG=32 NWG=32 KWG=32 MDIMC=8 NDIMC=8 MDIMA=8 NDIMB=8 KWI=2 VWM=4 VWN=4 STRM=0 STRN=0 SA=0 SB=0
#xGemm16
MWG=32 NWG=32 KWG=32 MDIMC=8 NDIMC=8 MDIMA=8 NDIMB=8 KWI=2 VWM=4 VWN=4 STRM=0 STRN=0 SA=0 SB=0
#hGemmWmma
MWG=16 NWG=16 KWG=16 MWAVE=16 NWAVE=16 MWARP=16 NWARP=16 VWM=2 VWN=2 SA=0 SB=0
#hGemmWmmaNCHW
MWG=16 NWG=16 KWG=16 MWAVE=16 NWAVE=16 MWARP=16 NWARP=16 VWM=1 VWN=2 SB=0 PAD_ELTS_PER_THREAD=1 PAD_ROWS_PER_THREAD=1
#conv3x3
INTILE_XSIZE=6 INTILE_YSIZE=6 OUTTILE_XSIZE=4 OUTTILE_YSIZE=4 transLocalSize0=1 transLocalSize1=1 untransLocalSize0=1 untransLocalSize1=1 untransLocalSize2=4
#conv5x5
INTILE_XSIZE=6 INTILE_YSIZE=6 OUTTILE_XSIZE=2 OUTTILE_YSIZE=2 transLocalSize0=1 transLocalSize1=1 untransLocalSize0=1 untransLocalSize1=1 untransLocalSize2=4
#gPool
XYSTRIDE=4 CHANNELSTRIDE=16 BATCHSTRIDE=1
#transformer
ATTN_BLOCK_Q=32 ATTN_BLOCK_KV=32 Q_PER_THREAD=1 USE_TILED_ATTN=1
#transformerRMSNorm
WG_C_SIZE=64 WG_XY_SIZE=1 C_PER_THREAD=4
#pointWise
ELTS_PER_THREAD=8 LOCAL_SIZE=128
#addChannelBiasesNCHW
XY_ELTS_PER_THREAD=4 NC_ELTS_PER_THREAD=1
#spatialRMSNorm
TILE_SIZE=32 APPLY_ELTS_PER_THREAD=16
"""


def pocl_only(vendors: Path | None = None) -> bool:
    """True when every installed OpenCL driver (ICD) is PoCL, i.e. OpenCL runs on the CPU.

    KataGo's tuner then spends minutes timing kernels for a device where the generic parameter
    set is as good as any (measured: 7 min for g170-b6c96 on two cores).
    """
    folder = vendors or Path(os.environ.get("OCL_ICD_VENDORS", "/etc/OpenCL/vendors"))
    try:
        icds = [p.read_text(errors="replace").strip() for p in folder.glob("*.icd")]
    except OSError:
        return False
    return bool(icds) and all("pocl" in icd.lower() for icd in icds)


# ------------------------------------------------------------------------------------ the config
def config_entries(settings: KataGoSettings, home_data_dir: Path, tuner_file: Path | None) -> dict[str, str]:
    """KataGo analysis config keys for ``settings`` (values already in KataGo's text syntax)."""

    def text(v: ConfigValue) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    cfg: dict[str, ConfigValue] = {
        "logToStderr": True,  # the supervisor routes stderr into our log and keeps its tail
        "logAllRequests": settings.log_all_requests,
        "logAllResponses": settings.log_all_responses,
        "logSearchInfo": settings.log_search_info,
        "homeDataDir": str(home_data_dir),
        "reportAnalysisWinratesAs": settings.report_analysis_winrates_as,
        "numAnalysisThreads": settings.num_analysis_threads,
        "numSearchThreadsPerAnalysisThread": settings.num_search_threads_per_analysis_thread,
        "nnMaxBatchSize": settings.nn_max_batch_size,
        "nnCacheSizePowerOfTwo": settings.nn_cache_size_power_of_two,
        "nnMutexPoolSizePowerOfTwo": settings.nn_mutex_pool_size_power_of_two,
    }
    if settings.max_visits is not None:
        cfg["maxVisits"] = settings.max_visits
    prefix = {"opencl": "opencl", "cuda": "cuda", "tensorrt": "trt", "metal": "metal"}.get(settings.backend)
    if prefix is not None:
        if settings.device is not None:
            cfg[f"{prefix}DeviceToUse"] = settings.device
        if settings.use_fp16 != "auto":
            cfg[f"{prefix}UseFP16"] = settings.use_fp16
    if settings.backend == "eigen" and settings.num_eigen_threads_per_model is not None:
        cfg["numEigenThreadsPerModel"] = settings.num_eigen_threads_per_model
    if tuner_file is not None:
        cfg["openclTunerFile"] = str(tuner_file)
    cfg.update(settings.extra)
    return {k: text(v) for k, v in cfg.items()}


def render_config(entries: Mapping[str, str]) -> str:
    lines = ["# generated by katago-edge (agent.engines.katago_binary); edits are overwritten"]
    lines += [f"{k} = {v}" for k, v in entries.items()]
    return "\n".join(lines) + "\n"


def prepare_config(settings: KataGoSettings, config_path: Path | None = None) -> tuple[Path, dict[str, str]]:
    """Write the generated config atomically; returns its path and the entries it holds.

    ``config_path`` (or ``settings.config``) names a user's own file instead: it is used as is
    and the returned entries are the ``-override-config`` keys the supervisor still needs.
    """
    cache = settings.resolved_cache_dir()
    home = (settings.home_data_dir or cache / "katago-home").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    tuner = settings.opencl_tuner_file
    generic = settings.opencl_tuning == "generic" or (settings.opencl_tuning == "auto" and pocl_only())
    if tuner is None and generic:
        tuner = home / "opencltuning" / "katago-edge-generic-tune13.txt"
        if not tuner.is_file() or tuner.read_text() != GENERIC_OPENCL_TUNING:
            atomic_write_text(tuner, GENERIC_OPENCL_TUNING)
    user_config = config_path or settings.config
    if user_config is not None:
        if not user_config.expanduser().is_file():
            raise EngineError(f"KataGo config {user_config} does not exist")
        overrides = {"logToStderr": "true"}
        if tuner is not None:
            overrides["openclTunerFile"] = str(tuner)
        return user_config.expanduser(), overrides
    entries = config_entries(settings, home, tuner)
    text = render_config(entries)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = cache / "configs" / f"analysis-{digest}.cfg"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return path, {}
