"""docs/usage.md is executed: every block marked `<!-- example: NAME -->` runs against a real
worker and prints exactly the block marked `<!-- output: NAME -->` (or, for a console block, the
lines below its `$` command)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from harness.stack import REPO, Broker, kubectl

from tests.e2e.test_dispatch import Dispatcher

pytestmark = pytest.mark.cluster

DOC = REPO / "docs" / "usage.md"
BLOCK = r"<!-- {kind}: (?P<name>[a-z-]+) -->\n```(?P<lang>\w+)\n(?P<body>.*?)```"


def examples() -> list[tuple[str, str, str]]:
    text = DOC.read_text()
    return [
        (m["name"], m["lang"], m["body"])
        for m in re.finditer(BLOCK.format(kind="example"), text, re.S)
    ]


def outputs() -> dict[str, str]:
    text = DOC.read_text()
    return {m["name"]: m["body"] for m in re.finditer(BLOCK.format(kind="output"), text, re.S)}


def free_the_ids() -> None:
    """The examples' fixed ids are Job names in the shared namespace: remove a leftover of an
    earlier run (answered Jobs carry no finalizer any more)."""
    ids = sorted(set(re.findall(r"usage-[a-z0-9-]+", DOC.read_text())))
    names = [name for name in ids if not name.endswith("-")]
    kubectl("-n", "dispatcher", "delete", "jobs", "--ignore-not-found", "--wait=true", *names)


def run(broker: Broker, lang: str, body: str) -> str:
    env = {
        **broker.instance.env(),
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    if lang == "python":
        argv = [sys.executable, "-c", body]
    else:
        command = body.splitlines()[0].removeprefix("$ ")
        argv = ["bash", "-c", command]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.stderr == "" or lang != "python", result.stderr
    return result.stdout


@pytest.mark.settings(PROGRESS_EXCHANGE_NAME="e2e.usage.progress", IDEMPOTENCY_WINDOW_SECONDS="0")
def test_every_example_in_the_usage_guide_prints_what_it_shows(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    free_the_ids()
    shown = outputs()
    found = examples()
    assert [name for name, _, _ in found] == [
        "options",
        "timeout",
        "refused",
        "retries",
        "follow-and-cancel",
        "async",
        "cli",
        "cli-file",
        "cli-error",
        "cli-bad-flag",
        "cli-cancel",
    ]

    for name, lang, body in found:
        started = time.monotonic()
        printed = run(broker, lang, body)
        expected = shown[name] if lang == "python" else body.split("\n", 1)[1]
        assert printed == expected, f"{name} ({time.monotonic() - started:.0f} s)"
