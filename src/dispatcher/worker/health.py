"""HTTP endpoints for the kubelet and Prometheus: /healthz, /readyz and /metrics.

/healthz answers 200 while the process serves HTTP. /readyz answers 200 only while the task
consumer is connected to the broker and every watch has listed its objects; otherwise 503 with
what is missing. /metrics is the Prometheus text format of this worker's registry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Readiness = Callable[[], list[str]]
"""Returns what is not ready yet (empty when ready)."""


class HealthServer:
    def __init__(self, port: int, readiness: Readiness, registry: CollectorRegistry) -> None:
        handler = _handler(readiness, registry)
        self._server = ThreadingHTTPServer(("0.0.0.0", port), handler)  # noqa: S104 - probes come from the node
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("health and metrics on :%d (/healthz, /readyz, /metrics)", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(readiness: Readiness, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, b"ok\n")
            elif self.path == "/readyz":
                missing = readiness()
                if missing:
                    self._send(503, ("not ready: " + ", ".join(missing) + "\n").encode())
                else:
                    self._send(200, b"ok\n")
            elif self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("health: " + format, *args)

    return Handler
