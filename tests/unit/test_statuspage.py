"""The worker's status page over real HTTP on 127.0.0.1, fed by fakes at our own ports."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources

import pytest

from dispatcher.core.overview import Overview, collect_overview
from dispatcher.core.taskview import TaskView, read_task
from dispatcher.worker.statuspage import StatusPage, Throttled
from tests.unit.fakes import SETTINGS, FakeKube
from tests.unit.test_overview import FixedProbe, busy_cluster

NOW = datetime(2025, 1, 10, 10, 10, tzinfo=UTC)


@pytest.fixture
def page() -> Iterator[tuple[StatusPage, list[str]]]:
    kube = busy_cluster()
    built: list[str] = []

    def overview() -> Overview:
        built.append("overview")
        return collect_overview(kube, FixedProbe(), SETTINGS, NOW)

    def task(task_id: str) -> TaskView | None:
        return read_task(
            kube, task_id, dispatcher_name=SETTINGS.dispatcher_name, max_run_seconds=600
        )

    server = StatusPage(0, overview, task)
    server.start()
    yield server, built
    server.stop()


def get(server: StatusPage, path: str, method: str = "GET") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request(method, path)
    response = connection.getresponse()
    response.read_body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def test_the_overview_json_is_what_dispatcher_status_prints(page: tuple[StatusPage, list[str]]):
    server, _ = page
    response = get(server, "/status.json")

    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    document = json.loads(response.read_body)  # type: ignore[attr-defined]
    assert document == collect_overview(busy_cluster(), FixedProbe(), SETTINGS, NOW).to_json()


def test_the_overview_is_built_once_however_often_it_is_asked(
    page: tuple[StatusPage, list[str]],
) -> None:
    server, built = page
    for _ in range(5):
        assert get(server, "/status.json").status == 200

    assert built == ["overview"]


def test_a_task_has_a_page_and_its_json_and_an_unknown_one_is_404(
    page: tuple[StatusPage, list[str]],
) -> None:
    server, _ = page

    assert get(server, "/tasks/run-1").status == 200
    shown = json.loads(get(server, "/tasks/run-1.json").read_body)  # type: ignore[attr-defined]
    assert shown["id"] == "run-1"
    assert shown["state"] == "running"
    missing = get(server, "/tasks/nope.json")
    assert missing.status == 404
    assert json.loads(missing.read_body) == {"error": "no Job for task nope"}  # type: ignore[attr-defined]
    assert get(server, "/tasks/Not_An_Id.json").status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def test_nothing_but_get_is_served(page: tuple[StatusPage, list[str]], method: str) -> None:
    server, _ = page
    response = get(server, "/status.json", method)

    assert response.status == 405
    assert response.getheader("Allow") == "GET"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        pytest.param("/", "text/html; charset=utf-8", id="page"),
        pytest.param("/static/status.js", "text/javascript; charset=utf-8", id="script"),
        pytest.param("/static/status.css", "text/css; charset=utf-8", id="style"),
    ],
)
def test_every_asset_is_the_workers_own_under_a_strict_policy(
    page: tuple[StatusPage, list[str]], path: str, content_type: str
) -> None:
    server, _ = page
    response = get(server, path)

    assert response.status == 200
    assert response.getheader("Content-Type") == content_type
    policy = response.getheader("Content-Security-Policy") or ""
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    body = response.read_body.decode()  # type: ignore[attr-defined]
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]", body), "nothing from elsewhere"


def test_other_paths_are_404(page: tuple[StatusPage, list[str]]) -> None:
    server, _ = page
    for path in ("/index.html", "/static/index.html", "/static/../config", "/metrics"):
        assert get(server, path).status == 404, path


def test_the_script_writes_text_never_html() -> None:
    script = (resources.files("dispatcher.worker") / "static" / "status.js").read_text()

    assert "innerHTML" not in script
    assert "outerHTML" not in script
    assert "insertAdjacentHTML" not in script
    assert re.findall(r"fetch\(([^,)]*)", script) == ["url"]


def test_throttled_builds_again_only_after_its_period() -> None:
    now = [0.0]
    builds: list[float] = []

    def build() -> Overview:
        builds.append(now[0])
        return collect_overview(FakeKube(), None, SETTINGS, NOW)

    throttled = Throttled(build, 2.0, clock=lambda: now[0])
    for at in (0.0, 1.0, 1.9, 2.0, 3.5, 4.1):
        now[0] = at
        throttled()

    assert builds == [0.0, 2.0, 4.1]
