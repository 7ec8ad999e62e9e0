"""The worker's status page in a real headless browser (Debian's chromium, driven by playwright),
during a burst larger than the node: it shows tasks waiting and running, its counts change
without a reload, a task's page shows its log tail. The screenshots go to docs/."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.stack import REPO, Broker, Worker
from playwright.sync_api import Page, sync_playwright

from tests.e2e.test_status import BurstInBackground

pytestmark = pytest.mark.cluster
Dispatcher = tuple[Broker, Worker]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PORT = free_port()
ORIGIN = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Page]:
    """A page of a fresh Chromium profile; every request it makes is recorded on it."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1200, "height": 900},
        )
        page = context.new_page()
        page.requests = []  # type: ignore[attr-defined]
        page.problems = []  # type: ignore[attr-defined]
        page.on("request", lambda r: page.requests.append((r.method, r.url)))  # type: ignore[attr-defined]
        page.on(
            "console",
            lambda m: page.problems.append(m.text) if m.type == "error" else None,  # type: ignore[attr-defined]
        )
        try:
            yield page
        finally:
            context.close()


def shown_counts(page: Page) -> tuple[int, int]:
    """(waiting for room, running) as the page shows them now."""
    waiting = page.text_content("#state-waiting_room .count") or "0"
    running = page.text_content("#state-running .count") or "0"
    return int(waiting), int(running)


@pytest.mark.settings(MAX_ACTIVE_JOBS="500", IMAGE_PULL_GRACE_SECONDS="5", STATUS_PORT=str(PORT))
def test_the_status_page_follows_a_burst_live_and_shows_a_tasks_log(
    dispatcher: Dispatcher, browser_page: Page
) -> None:
    broker, _ = dispatcher
    page = browser_page
    samples: list[tuple[int, int]] = []
    with BurstInBackground(broker, 60, 20) as burst:
        page.goto(ORIGIN + "/")
        page.wait_for_selector("#state-running .count", timeout=30_000)
        page.evaluate("window.loadedOnce = true")  # gone if the page were loaded again
        deadline = time.monotonic() + 150
        shot = False
        while time.monotonic() < deadline:
            samples.append(shown_counts(page))
            waiting, running = samples[-1]
            if waiting >= 10 and running >= 10 and not shot:  # the node is full: a picture
                page.screenshot(path=str(REPO / "docs" / "status-overview.png"), full_page=False)
                shot = True
            if shot and len(set(samples)) >= 3:
                break
            time.sleep(1)
        still_same_page = page.evaluate("window.loadedOnce === true")
    assert burst.result is not None
    assert burst.result.answered == 60, burst.result.summary()

    assert shot, samples  # tasks waited for room while others ran
    assert any(w > 0 and r > 0 for w, r in samples), samples
    assert len(set(samples)) >= 3, samples  # the counts changed while the page stayed
    assert still_same_page
    fetched = [url for method, url in page.requests if url.endswith("/status.json")]  # type: ignore[attr-defined]
    assert len(fetched) >= 3

    finished = next(iter(burst.result.answer_times))
    page.goto(f"{ORIGIN}/tasks/{finished}")
    page.wait_for_selector("#log", timeout=15_000)
    assert (page.text_content("#log") or "").strip() == finished
    assert f"task {finished}: answered" in (page.text_content("main") or "")
    page.screenshot(path=str(REPO / "docs" / "status-task.png"), full_page=True)

    requests = page.requests  # type: ignore[attr-defined]
    assert {method for method, _ in requests} == {"GET"}
    assert all(url.startswith(ORIGIN + "/") for _, url in requests), requests
    assert page.problems == []  # type: ignore[attr-defined]
