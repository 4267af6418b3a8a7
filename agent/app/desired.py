"""The desired-state message of a fleet rollout: which network a device should serve.

``katago-edge fleet deploy`` publishes one per device, retained, on
``<p>/<device>/deployment/desired`` (only operator credentials may: see docs/mqtt.md); the daemon
(``agent.app.deployment``) reads it on every connect and acts on each deployment id once::

    {"id": "d-20261207-1830-ab12",          one topic level: letters, digits, '.', '_', '-'
     "action": "deploy",                     or "rollback" (with "rollback_of": DEPLOYMENT)
     "network": "b7c96h3tfrs-test5-cnorm.bin.gz",
     "sha256": "<64 hex>",                   required: a message without it is refused
     "size": 4915200,                        bytes; the download stops beyond it
     "url": "http://10.0.0.5:8470/b7c96h3tfrs-test5-cnorm.bin.gz",   http(s)://, file:// or
                                             mqtt:<p>/fleet/models/<sha256> (agent.app.mqtt_download)
     "runtime": "onnx", "precision": "fp32", optional overrides of the profile's runtime list
     "issued": 1796668200.0}

A rollback names the network to return to by its sha256; a device that still keeps that network
(its previous one) swaps back without a download, otherwise ``url`` is fetched as for a deploy.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

from agent.errors import DeploymentError

ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NETWORK_SUFFIXES = (".bin.gz", ".txt.gz", ".bin", ".txt", ".gz")
RUNTIMES = ("onnx", "tflite", "tensorrt", "numpy")
PRECISIONS = ("fp32", "fp16", "int8")
URL_SCHEMES = ("http", "https", "file")


@dataclass(frozen=True)
class Desired:
    """One parsed desired-state message."""

    id: str
    sha256: str
    network: str
    action: str = "deploy"
    url: str | None = None
    size: int | None = None
    runtime: str | None = None
    precision: str | None = None
    rollback_of: str | None = None
    issued: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def overrides(self) -> dict[str, Any]:
        """Profile overrides for the runtime/precision asked, or {} for the profile's own list."""
        if self.runtime is None:
            return {}
        return {"runtimes": [{"runtime": self.runtime, "precision": self.precision or "fp32"}]}


def network_name_from_url(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])


MQTT_URL_RE = re.compile(r"mqtt:[^+#\x00]+/fleet/models/([0-9a-f]{64})")


def check_url(url: str) -> str:
    if url.startswith("mqtt:"):
        if not MQTT_URL_RE.fullmatch(url):
            raise DeploymentError(f"url {url!r}: an MQTT transfer is mqtt:<prefix>/fleet/models/<sha256>")
        return url
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in URL_SCHEMES or (parsed.scheme != "file" and not parsed.netloc):
        raise DeploymentError(f"url {url!r}: expected http://, https:// or file://")
    if parsed.scheme == "file" and (
        parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/")
    ):
        raise DeploymentError(f"url {url!r}: a file:// URL names an absolute path (file:///path)")
    return url


def json_object(payload: bytes, what: str) -> dict[str, Any]:
    """``payload`` decoded as one JSON object; ``DeploymentError`` naming ``what`` otherwise."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise DeploymentError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DeploymentError(f"{what} must be a JSON object")
    return doc


def parse_desired(payload: bytes) -> Desired | None:
    """The desired state in ``payload``; None for an empty (cleared) retained message.

    Raises ``DeploymentError`` saying why a message is refused (no sha256 above all)."""
    if not payload:
        return None
    doc = json_object(payload, "desired state")
    dep_id = doc.get("id")
    if not isinstance(dep_id, str) or not ID_RE.fullmatch(dep_id):
        raise DeploymentError(f"desired state: bad or missing id {dep_id!r}")
    sha = doc.get("sha256")
    if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha.lower()):
        raise DeploymentError(f"deployment {dep_id}: no sha256 (64 hex digits): refused")
    action = doc.get("action", "deploy")
    if action not in ("deploy", "rollback"):
        raise DeploymentError(f"deployment {dep_id}: action must be 'deploy' or 'rollback', got {action!r}")
    url = doc.get("url")
    if url is not None:
        if not isinstance(url, str):
            raise DeploymentError(f"deployment {dep_id}: url must be a string")
        check_url(url)
        over_mqtt = MQTT_URL_RE.fullmatch(url)
        if over_mqtt and over_mqtt.group(1) != sha.lower():
            raise DeploymentError(f"deployment {dep_id}: the MQTT transfer {url} is not keyed by its sha256")
    elif action == "deploy":
        raise DeploymentError(f"deployment {dep_id}: no url to get the network from")
    network = doc.get("network") or (network_name_from_url(url) if url and "://" in url else None)
    if not isinstance(network, str) or not NAME_RE.fullmatch(network) or ".." in network:
        raise DeploymentError(f"deployment {dep_id}: bad network name {network!r}")
    if action == "deploy" and not network.endswith(NETWORK_SUFFIXES):
        raise DeploymentError(f"deployment {dep_id}: {network!r} is not a KataGo network file name")
    size = doc.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise DeploymentError(f"deployment {dep_id}: size must be a positive integer")
    runtime, precision = doc.get("runtime"), doc.get("precision")
    if runtime is not None and runtime not in RUNTIMES:
        raise DeploymentError(f"deployment {dep_id}: runtime must be one of {', '.join(RUNTIMES)}")
    if precision is not None and precision not in PRECISIONS:
        raise DeploymentError(f"deployment {dep_id}: precision must be one of {', '.join(PRECISIONS)}")
    if precision is not None and runtime is None:
        raise DeploymentError(f"deployment {dep_id}: precision needs a runtime")
    rollback_of = doc.get("rollback_of")
    if action == "rollback" and (not isinstance(rollback_of, str) or not ID_RE.fullmatch(rollback_of)):
        raise DeploymentError(f"deployment {dep_id}: a rollback names the deployment it undoes (rollback_of)")
    issued = doc.get("issued")
    return Desired(
        id=dep_id,
        sha256=sha.lower(),
        network=network,
        action=action,
        url=url,
        size=size,
        runtime=runtime,
        precision=precision,
        rollback_of=rollback_of if action == "rollback" else None,
        issued=float(issued) if isinstance(issued, int | float) and not isinstance(issued, bool) else None,
    )
