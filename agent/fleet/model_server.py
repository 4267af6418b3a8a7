"""``katago-edge fleet serve-model FILE``: one network file over HTTP, for devices to download.

Serves exactly one file at ``/<its name>`` (anything else is 404), with ``Range`` requests so an
interrupted device download resumes (``bytes=N-`` and ``bytes=N-M`` -> 206 with
``Content-Range``). ``fleet deploy FILE`` starts one itself for the rollout's duration; run this
command instead when the devices must be able to fetch the file after ``deploy`` returned (an
offline device that comes back later), and pass the printed URL and sha256 to ``fleet deploy``.
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

from agent.errors import ConfigError, TransportError
from agent.fsutil import sha256_file

logger = logging.getLogger(__name__)

RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)$")
COPY_CHUNK = 1 << 16


class ModelServer:
    """A threading HTTP server for one file; ``url`` is what devices are told."""

    def __init__(
        self, file: Path, host: str = "0.0.0.0", port: int = 0, advertise: str | None = None
    ) -> None:
        if not file.is_file():
            raise ConfigError(f"{file}: no such network file")
        self.file = file
        self.name = file.name
        self.size = file.stat().st_size
        self.sha256 = sha256_file(file)
        handler = _handler_for(file)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        shown = advertise or (
            str(bound_host) if bound_host not in ("0.0.0.0", "::") else socket.gethostname()
        )
        self.url = f"http://{shown}:{bound_port}/{urllib.parse.quote(self.name)}"
        self._thread: threading.Thread | None = None

    def start(self) -> ModelServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="model-server", daemon=True)
        self._thread.start()
        logger.info("serving %s (%d bytes, sha256 %s) at %s", self.file, self.size, self.sha256, self.url)
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close_socket(self) -> None:
        self._server.server_close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)


def _handler_for(file: Path) -> type[BaseHTTPRequestHandler]:
    path_ok = "/" + urllib.parse.quote(file.name)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in (path_ok, "/" + file.name):
                self.send_error(404, "only the deployed network is served here")
                return
            size = file.stat().st_size
            start, end = 0, size - 1
            wanted = self.headers.get("Range")
            match = RANGE_RE.match(wanted.strip()) if wanted else None
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            with file.open("rb") as fh:
                fh.seek(start)
                try:
                    _copy(fh, self.wfile, end - start + 1)  # type: ignore[arg-type]
                except (BrokenPipeError, ConnectionResetError):
                    logger.info("download of %s by %s broken off", file.name, self.client_address[0])

        def log_message(self, format: str, *args: object) -> None:
            logger.info("%s: %s", self.client_address[0], format % args)

    return Handler


def _copy(src: BinaryIO, dst: BinaryIO, count: int) -> None:
    while count > 0:
        chunk = src.read(min(COPY_CHUNK, count))
        if not chunk:
            return
        dst.write(chunk)
        count -= len(chunk)


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen expects HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def configure_serve_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the network file (.bin.gz) to serve")
    parser.add_argument("--listen", default="0.0.0.0:8470", help="HOST:PORT to listen on (port 0 = any free)")
    parser.add_argument(
        "--advertise", help="host name or address devices use in the URL (default: this host's)"
    )


def command_serve_model(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    server = ModelServer(args.file, host, port, args.advertise)
    print(f"serving {server.name}: {server.url}", flush=True)
    print(f"sha256 {server.sha256}, {server.size} bytes", flush=True)
    print(f"deploy it: katago-edge fleet deploy {server.url} --sha256 {server.sha256} --all", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 0
    finally:
        server.close_socket()
    return 0
