"""The read-only status page each worker serves on STATUS_PORT, bound to 127.0.0.1.

An operator reaches it with `kubectl port-forward`; nothing else can (no Service names it). It
shows what `dispatcher status` shows, built by the same `core.overview` and `core.taskview`:

    GET /                  the overview page (it fetches /status.json every 2 s)
    GET /status.json       the overview
    GET /tasks/ID          one task's page (it fetches /tasks/ID.json every 2 s)
    GET /tasks/ID.json     one task: timeline, events, log tail (404 when there is no Job)
    GET /static/NAME       the page's own script and style sheet

Every asset comes from this package (no CDN); the page builds its content from the JSON with
`textContent` only, and a Content-Security-Policy allows nothing but this origin. Only GET is
served: nothing here changes anything. The overview is built at most once per
`OVERVIEW_SECONDS` however many pages are open (two lists and three passive declares), and not at
all while none is open.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Final

from dispatcher.core.overview import Overview
from dispatcher.core.taskview import TaskView
from dispatcher.errors import KubeError

log = logging.getLogger(__name__)

OVERVIEW_SECONDS: Final = 2.0
_ASSETS: Final = ("status.js", "status.css")
_TYPES: Final = {
    "index.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_TASK_PATH: Final = re.compile(r"^/tasks/([a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)(\.json)?$")
"""A task's page or JSON: the id is the RFC 1035 label every task id is."""


def _asset(name: str) -> bytes:
    return (resources.files("dispatcher.worker") / "static" / name).read_bytes()


class Throttled:
    """`build()`'s last result while it is younger than `seconds`; one build at a time."""

    def __init__(
        self,
        build: Callable[[], Overview],
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, Overview] | None = None

    def __call__(self) -> Overview:
        with self._lock:
            if self._last is None or self._clock() - self._last[0] >= self._seconds:
                self._last = (self._clock(), self._build())
            return self._last[1]


class StatusPage:
    """An HTTP server on 127.0.0.1:`port` in a daemon thread."""

    def __init__(
        self,
        port: int,
        overview: Callable[[], Overview],
        task: Callable[[str], TaskView | None],
        *,
        host: str = "127.0.0.1",
    ) -> None:
        pages = {name: _asset(name) for name in _TYPES}
        handler = _handler(Throttled(overview, OVERVIEW_SECONDS), task, pages)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="status-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("status page on 127.0.0.1:%d (kubectl port-forward to reach it)", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    overview: Callable[[], Overview],
    task: Callable[[str], TaskView | None],
    pages: dict[str, bytes],
) -> type[BaseHTTPRequestHandler]:
    namespace = {
        "overview": staticmethod(overview),
        "task": staticmethod(task),
        "pages": pages,
    }
    return type("StatusHandler", (_Handler,), namespace)


class _Handler(BaseHTTPRequestHandler):
    overview: Callable[[], Overview]
    task: Callable[[str], TaskView | None]
    pages: dict[str, bytes]

    def do_GET(self) -> None:
        try:
            self._route(self.path.split("?", 1)[0])
        except KubeError as exc:
            self._json(503, {"error": str(exc)})

    def _route(self, path: str) -> None:
        match = _TASK_PATH.match(path)
        if match and match[2]:
            self._task(match[1])
        elif path == "/status.json":
            self._json(200, self.overview().to_json())
        elif path == "/favicon.ico":  # asked by every browser: nothing, rather than a 404
            self._send(204, b"", "image/x-icon")
        else:
            name = "index.html" if path == "/" or match else path.removeprefix("/static/")
            if path.startswith("/static/") and name not in _ASSETS:
                name = ""
            if name in self.pages:
                self._send(200, self.pages[name], _TYPES[name])
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _task(self, task_id: str) -> None:
        view = self.task(task_id)
        if view is None:
            self._json(404, {"error": f"no Job for task {task_id}"})
        else:
            self._json(200, view.to_json())

    def _refuse(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _refuse

    def _json(self, status: int, document: dict[str, Any]) -> None:
        self._send(status, json.dumps(document, ensure_ascii=False).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("status page: " + format, *args)
